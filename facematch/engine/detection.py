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

The search itself is ``mtcnn_search`` (facenet-pytorch's arithmetic in NumPy, batched; with
``detect_backend=onnx-pil`` Pillow's resampling, which moves boxes by a few pixels), or with
``detect_backend=torch`` facenet-pytorch's own ``detect_face`` (``mtcnn_facenet``).
The networks are facenet-pytorch's pretrained weights; with ONNX Runtime their graphs are read
from the data dir where ``python -m deployment_utils.graphs build`` wrote them.
``rank_faces`` orders the detections by the configured face selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facematch.engine import mtcnn_search
from facematch.engine.backends import Network, Placement, Runtime, get_runtime
from facematch.engine.options import SELECTION_METHODS, EngineOptions

THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709
RETRY_MIN_FACE_SIZE = 20
# Each network: its graph's name, the input shape its ONNX graph is traced with, and the axes
# that may vary.
NETWORKS = (
    ("mtcnn-pnet", (1, 3, 48, 64), {0: "n", 2: "h", 3: "w"}),
    ("mtcnn-rnet", (2, 3, 24, 24), {0: "n"}),
    ("mtcnn-onet", (2, 3, 48, 48), {0: "n"}),
)


def mtcnn_network(name: str) -> Network:
    """facenet-pytorch's pretrained P-, R- or O-net (``mtcnn-pnet``, ...) as a ``Network``; its
    weights file (in the facenet-pytorch package) decides whether a built graph is current.
    Without facenet-pytorch (the default image) there is no such file: the source is None and
    the built graph's note is trusted."""
    import importlib.util

    stem = name.removeprefix("mtcnn-")
    spec = importlib.util.find_spec("facenet_pytorch")
    source = Path(spec.origin).parent / "data" / f"{stem}.pt" if spec and spec.origin else None
    shape, dynamic = next((s, d) for n, s, d in NETWORKS if n == name)

    def module():
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        return {"pnet": PNet, "rnet": RNet, "onet": ONet}[stem]().eval()

    return Network(name, module, shape, dynamic, source)


@dataclass(frozen=True)
class Detections:
    """MTCNN's raw output in original-image pixels, unranked: boxes (n, 4), probs (n,),
    landmarks (n, 5, 2). Benchmarks cache these so crop and embedding variants reuse them."""

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(*mtcnn_search.no_faces())


class FaceDetector:
    """Finds faces with MTCNN's networks in the configured runtime and search parameters."""

    def __init__(
        self,
        pnet: Runtime,
        rnet: Runtime,
        onet: Runtime,
        device: str,
        detect_max_side: int,
        min_face_size: int,
        pillow_resampling: bool,
        facenet_search: bool = False,
    ):
        self.networks = (pnet, rnet, onet)
        self.device = device
        self.detect_max_side = detect_max_side
        self.min_face_size = min_face_size
        self.pillow_resampling = pillow_resampling
        self.facenet_search = facenet_search

    @classmethod
    def from_options(cls, options: EngineOptions) -> FaceDetector:
        """Load facenet-pytorch's pretrained P-, R- and O-nets into the options' runtime."""
        placement = Placement(options.device, options.threads, options.graph_dir)
        pnet, rnet, onet = (
            get_runtime(options.detect_runtime, mtcnn_network(name), placement)
            for name, _, _ in NETWORKS
        )
        return cls(
            pnet,
            rnet,
            onet,
            options.device,
            options.detect_max_side,
            options.min_face_size,
            options.pillow_resampling,
            facenet_search=options.detect_runtime == "torch",
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
        if self.facenet_search:
            from facematch.engine import mtcnn_facenet

            found = mtcnn_facenet.search(
                search, min_face_size, *self.networks, THRESHOLDS, FACTOR, self.device
            )
        else:
            found = mtcnn_search.search(
                search,
                min_face_size,
                *self.networks,
                THRESHOLDS,
                FACTOR,
                pillow=self.pillow_resampling,
            )
        return Detections(*found)


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
