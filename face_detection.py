"""Face detection: MTCNN's three networks and the parameters of its search.

``FaceDetector`` owns the P-, R- and O-nets (facenet-pytorch's pretrained ``PNet``, ``RNet`` and
``ONet``, each in the runtime backend the options name) and decides how a photo is searched:

* ``detect_max_side``: on a copy downscaled so its longer side is at most this many pixels; the
  boxes and landmarks are mapped back to the original's pixels (0 = search at full size);
* ``min_face_size``: the smallest face searched for first, in pixels of the searched image; a
  photo where none is found is searched again at ``RETRY_MIN_FACE_SIZE`` (MTCNN's usual 20), so
  small faces cost time only in photos without a larger one;
* ``THRESHOLDS`` and ``FACTOR``: facenet-pytorch's defaults for the three stages' face
  probabilities and the image pyramid's scale step.

The search itself is facenet-pytorch's ``detect_face``, or with ``detect_backend=onnx-pil``
``mtcnn_pil``: the same arithmetic with Pillow's resampling (boxes move by a few pixels).
``rank_faces`` orders the detections by the configured face selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    detect_face,
    generateBoundingBox,
    pad,
    rerec,
)
from PIL import Image
from torchvision.ops import nms

from engine_options import SELECTION_METHODS, EngineOptions
from face_crops import standardise
from runtime_backends import Network, Placement, Runtime, get_runtime

THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709
RETRY_MIN_FACE_SIZE = 20
# Each network, the input shape its ONNX graph is traced with, and the axes that may vary.
NETWORKS = (
    (PNet, (1, 3, 48, 64), {0: "n", 2: "h", 3: "w"}),
    (RNet, (2, 3, 24, 24), {0: "n"}),
    (ONet, (2, 3, 48, 48), {0: "n"}),
)


@dataclass(frozen=True)
class Detections:
    """MTCNN's raw output in original-image pixels, unranked: boxes (n, 4), probs (n,),
    landmarks (n, 5, 2). Benchmarks cache these so crop and embedding variants reuse them."""

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


class DetectFaceStage(torch.nn.Module):
    """A runtime backend in the shape facenet-pytorch's ``detect_face`` calls a network: a
    ``torch.nn.Module`` mapping a batch to a tuple of tensors.

    ``detect_face`` reads its input dtype from ``next(pnet.parameters()).dtype``; ``dtype_probe``,
    a float32 scalar parameter, exists only to answer that read."""

    def __init__(self, runtime: Runtime):
        super().__init__()
        self.runtime = runtime
        self.dtype_probe = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.runtime.run(x)


class FaceDetector:
    """Finds faces with MTCNN's networks in the configured runtime and search parameters."""

    def __init__(
        self,
        pnet: Runtime,
        rnet: Runtime,
        onet: Runtime,
        device: torch.device,
        detect_max_side: int,
        min_face_size: int,
        pillow_resampling: bool,
    ):
        self.stages = tuple(DetectFaceStage(net) for net in (pnet, rnet, onet))
        self.device = device
        self.detect_max_side = detect_max_side
        self.min_face_size = min_face_size
        self.pillow_resampling = pillow_resampling

    @classmethod
    def from_options(cls, options: EngineOptions) -> FaceDetector:
        """Load facenet-pytorch's pretrained P-, R- and O-nets into the options' runtime."""
        device = torch.device(options.device)
        placement = Placement(device, options.threads)
        pnet, rnet, onet = (
            get_runtime(options.detect_runtime, Network(net().eval(), shape, dynamic), placement)
            for net, shape, dynamic in NETWORKS
        )
        return cls(
            pnet,
            rnet,
            onet,
            device,
            options.detect_max_side,
            options.min_face_size,
            options.pillow_resampling,
        )

    def find_faces(self, image: Image.Image) -> Detections:
        """Every face in an RGB image, in the original's pixels (see the module's docstring for
        the downscaled search and the retry at ``RETRY_MIN_FACE_SIZE``)."""
        search, scale = self.search_image(image)
        found = self.run_mtcnn(search, self.min_face_size)
        if not len(found.boxes) and self.min_face_size > RETRY_MIN_FACE_SIZE:
            found = self.run_mtcnn(search, RETRY_MIN_FACE_SIZE)
        return Detections(found.boxes / scale, found.probs, found.landmarks / scale)

    def search_image(self, image: Image.Image) -> tuple[Image.Image, float]:
        """The image MTCNN searches and its scale: the original, or a copy whose longer side is
        ``detect_max_side`` (integer box reduction first, then bilinear, for speed)."""
        width, height = image.size
        if not self.detect_max_side or max(width, height) <= self.detect_max_side:
            return image, 1.0
        scale = self.detect_max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return image.resize(size, Image.BILINEAR, reducing_gap=1.0), scale

    def run_mtcnn(self, search: Image.Image, min_face_size: int) -> Detections:
        """MTCNN's three stages on ``search`` for faces of at least ``min_face_size`` pixels, in
        ``search``'s pixels."""
        if min(search.size) < min_face_size:
            return Detections.empty()  # no face fits; MTCNN itself would raise on so small an image
        with torch.inference_mode():
            if self.pillow_resampling:
                runtimes = (stage.runtime for stage in self.stages)
                return mtcnn_pil(search, min_face_size, *runtimes, THRESHOLDS, FACTOR)
            boxes, points = detect_face(
                search, min_face_size, *self.stages, THRESHOLDS, FACTOR, self.device
            )
        boxes, points = np.asarray(boxes[0], dtype=np.float64), np.asarray(points[0])
        if not len(boxes):
            return Detections.empty()
        return Detections(
            boxes[:, :4].reshape(-1, 4),
            boxes[:, 4].reshape(-1),
            points.astype(np.float64).reshape(-1, 5, 2),
        )


def rank_faces(
    boxes: np.ndarray,
    probs: np.ndarray,
    width: int,
    height: int,
    method: str,
    center_weight: float = 2.0,
    threshold: float = 0.9,
) -> list[int]:
    """Order face indices best first by facenet-pytorch's selection ``method``.

    ``center_weighted_size`` (the default, measured best on LFW: see the README) scores a face by
    its box area minus ``center_weight`` times its squared offset from the image centre, so the
    subject of a portrait wins over larger faces at the edge. ``largest_over_threshold`` ranks
    faces under ``threshold`` probability last.
    """
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if method == "largest":
        score = areas
    elif method == "probability":
        score = probs
    elif method == "center_weighted_size":
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        offsets = centres - np.array([width / 2, height / 2])
        score = areas - center_weight * np.sum(offsets**2, axis=1)
    elif method == "largest_over_threshold":
        score = areas + np.where(probs > threshold, 0.0, -np.inf)
    else:
        raise ValueError(f"unknown face selection {method!r}; expected one of {SELECTION_METHODS}")
    return [int(i) for i in np.argsort(-score, kind="stable")]


def _stage_input(
    image: Image.Image, boxes: torch.Tensor, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each box (clamped as facenet-pytorch's ``pad`` does) resampled to ``size`` x ``size``
    with an area filter; returns the batch and the indices of the boxes that had pixels."""
    y, ey, x, ex = pad(boxes, image.width, image.height)
    keep = np.nonzero((ey > y - 1) & (ex > x - 1))[0]
    batch = (
        np.stack(
            [
                standardise(
                    np.asarray(
                        image.resize(
                            (size, size),
                            Image.BOX,
                            box=(int(x[k]) - 1, int(y[k]) - 1, int(ex[k]), int(ey[k])),
                        )
                    )
                )
                for k in keep
            ]
        )
        if len(keep)
        else np.zeros((0, 3, size, size), np.float32)
    )
    return batch, keep


def mtcnn_pil(
    image: Image.Image,
    min_face_size: int,
    pnet: Runtime,
    rnet: Runtime,
    onet: Runtime,
    thresholds: tuple[float, float, float],
    factor: float,
) -> Detections:
    """facenet-pytorch's ``detect_face`` for one image, with every resampling done by Pillow's
    area (BOX) filter instead of per-box PyTorch calls (``detect_backend=onnx-pil``).

    The box arithmetic, thresholds and non-maximum suppression are facenet-pytorch's own; only
    the resampling differs (exact pixel areas rather than whole-pixel windows), which moves boxes
    by a few pixels (about 3 px median on LFW; see tests/test_engine_options.py).
    """
    width, height = image.size
    scale = 12.0 / min_face_size
    side = min(width, height) * scale
    levels = []
    while side >= 12:
        levels.append(scale)
        scale, side = scale * factor, side * factor
    found = []
    for scale in levels:
        level = image.resize((int(width * scale + 1), int(height * scale + 1)), Image.BOX)
        reg, prob = pnet.run(torch.from_numpy(standardise(np.asarray(level))[None]))
        boxes, _ = generateBoundingBox(reg, prob[:, 1], scale, thresholds[0])
        found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
    boxes = torch.cat(found)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    if not len(boxes):
        return Detections.empty()
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = rerec(
        torch.stack(
            [
                boxes[:, 0] + boxes[:, 5] * regw,
                boxes[:, 1] + boxes[:, 6] * regh,
                boxes[:, 2] + boxes[:, 7] * regw,
                boxes[:, 3] + boxes[:, 8] * regh,
                boxes[:, 4],
            ],
            dim=1,
        )
    )

    batch, keep = _stage_input(image, boxes, 24)
    if not len(keep):
        return Detections.empty()
    reg, prob = rnet.run(torch.from_numpy(batch))
    boxes = boxes[torch.from_numpy(keep)]
    passed = prob[:, 1] > thresholds[1]
    boxes = torch.cat([boxes[passed, :4], prob[passed, 1:2]], dim=1)
    reg = reg[passed]
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = rerec(bbreg(boxes[pick], reg[pick]))
    if not len(boxes):
        return Detections.empty()

    batch, keep = _stage_input(image, boxes, 48)
    if not len(keep):
        return Detections.empty()
    reg, points, prob = onet.run(torch.from_numpy(batch))
    boxes = boxes[torch.from_numpy(keep)]
    passed = prob[:, 1] > thresholds[2]
    boxes = torch.cat([boxes[passed, :4], prob[passed, 1:2]], dim=1)
    reg, points = reg[passed], points[passed]
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    points = torch.stack(
        [
            w[:, None] * points[:, :5] + boxes[:, 0:1] - 1,
            h[:, None] * points[:, 5:] + boxes[:, 1:2] - 1,
        ],
        dim=2,
    )
    boxes = bbreg(boxes, reg)
    pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], torch.zeros(len(boxes)), 0.7, "Min")
    boxes, points = boxes[pick].numpy().astype(np.float64), points[pick].numpy()
    if not len(boxes):
        return Detections.empty()
    return Detections(
        boxes[:, :4].reshape(-1, 4),
        boxes[:, 4].reshape(-1),
        points.astype(np.float64).reshape(-1, 5, 2),
    )
