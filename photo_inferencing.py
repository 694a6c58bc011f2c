"""The face engine: finds faces with MTCNN and embeds them with InceptionResnetV1.

``FaceEngine`` loads both networks once and owns them; every request shares it (Gunicorn
``preload`` shares it across workers too). Inference runs under ``torch.inference_mode``.

Speed options, each measured in the README's Performance section:

* ``detect_max_side``: detect on a copy downscaled so its longer side is at most this many
  pixels, then crop the face from the full-resolution original (0 = detect at full size);
* ``embed_backend`` / ``detect_backend``: run InceptionResnetV1 / MTCNN's three stages in ONNX
  Runtime (``onnx``) or PyTorch (``torch``); the ONNX graphs are exported from the loaded
  PyTorch weights at start-up, so both compute the same function and find the same boxes;
  ``detect_backend=onnx-pil`` also replaces facenet-pytorch's resampling with Pillow's
  (``mtcnn_pil``): faster, but its boxes differ by a few pixels and View 1 accuracy was lower;
* ``embed_backend=onnx-int8``: a statically quantized embedder built by
  ``benchmarking_utils.quantize`` (opt-in: it needs LFW to calibrate);
* ``min_face_size``: the smallest face MTCNN searches for first, in pixels of the searched image
  (a photo where none is found is searched again at 20);
* ``align_faces``: rotate each crop so the eyes are level (measured: it does not help this model);
* ``flip_embeddings``: add the embedding of the mirrored crop (more accurate, twice the work);
* ``center_embeddings``: subtract the model's mean face embedding (``EMBEDDING_CENTERS``) before
  the cosine distance, which separates people better.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import MTCNN, InceptionResnetV1
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    detect_face,
    extract_face,
    generateBoundingBox,
    pad,
    rerec,
)
from PIL import Image
from torchvision.ops import nms

from config import Settings
from deployment_utils.weights import load_state_dict, resolve_weights

log = logging.getLogger(__name__)

FACE_SIZE = 160
SELECTION_METHODS = ("center_weighted_size", "largest", "probability", "largest_over_threshold")
BACKENDS = ("onnx", "onnx-pil", "torch")
EMBED_BACKENDS = ("onnx", "onnx-int8", "torch")
ONNX_OPSET = 17
RETRY_MIN_FACE_SIZE = 20  # MTCNN's usual smallest face; the search falls back to it
INT8_BUILD = "python -m benchmarking_utils.quantize"

# The mean unit embedding of LFW View 1 DevTrain faces per model (float16, base64), written by
# ``python -m benchmarking_utils.center``. Subtracting it before the cosine distance removes the
# direction every face shares (Sandberg's ``--subtract_mean``); measured in the README's
# Performance section.
EMBEDDING_CENTERS: dict[str, str] = {
    "casia-webface": (
        "GSHJlngUcSG+lYujP6P1G0QiUKBlpk6ccKQjmPoNrBxTo/Ui6p5jAI2eGh2JoHuYl6PWIE2jFyTcpIwgOxzTnoEf"
        "L51oHg8AaiA3pFWWSB4VILukLKBBI9Kg7SVNHS2X2JxjIlwhBCJ8pHqXPZxTFvae3KA1n7ufdyALHD6dRaAaG0Kg"
        "ABrqnC8QVZylBF4ZOB6Ul3eUiyHqpHchHR0qIVKg0R1lHJ8YiZ2oIJ+iHiCImJ2cGaH8HM8gFqDaHHAStiSBFvce"
        "USSSIaoh1yBmIWEcN5BbnXsgehcnEQ8YbZIKJHGYGx2YHvyfNYXXFdYenqPhIzkaBApWHEkm8qBgnN2Nj6CCod4e"
        "jxinGaucYZu/FqegWAHaHuWiZ6OJIcoUNx4KIlYXFCWbI7sV0KTUnGAnEJ4TnoWcJ4jamNCcthlgG5GfIBCFmiQN"
        "RZz9GXegUiIqD/MZe50wHCSgwaIqGAChoprSGBAcNCNEoJYS/gxIIH+abRmhpdKaz5MZIOcNvJxzlIEjpJXIIlSi"
        "YCQAJbATWaWPG48YHxtUHQsjMCEhnx8lbSIJm8ch3Rw1m8QUZaIMjAIaoBWJGrGcaB0tGqghxJ78GjIa+SGfFJyj"
        "RaAQnkIeDCLknQaklhSaHJghKpyKGSodkCaHoNYc5hykJXEKsBdUG2IkV51bnNUOGafxnskk4Z+vmPYPfiR9mpKh"
        "/ZnGojYcJCF4IuEjdRQWnlSlVZsUoHCX9hstoCehvCJGF5UbsZ8hjAukQx0VG3GbrqPNndkdppzNIZuNZZ3Uocig"
        "WaDWEXQdOyEwFrQhEhLSoIyUfCS5ICyXdSKdmAChG586JP4m1hxrpQGcoRx9oBIZD6ELJDmZKqbiopicNaAsoYSg"
        "LqTzHzUj6B9DnD2hLxcAn6IWthWuITAOkRuNIwEVAAdOoqqamCJWGUSd3Bshlveh+JwGoqwh3aM5H32gIaJFpHyZ"
        "eiTKFHsjVB4FIimZFSLcJMyYLSCfIKWaxR1OmCMkJSXDEz+gNxQmnxYeFByJIruV7hcQGNulRKBTHwUjyaDxnPGf"
        "pqETIuOdzifnG/CBYBxKHymkgiD2HzelESGQJsgeFg/aFO0cf6SqGRakZpXFFhUcDiEGoYOa06IoGXSfRxa9Gn2h"
        "FBZoHoaPWxlln1Sf6xfnGuScMBWzE8wiD6B3nLEY6xkeFvaW9x0poCqkrxjaGewbGyFimHGUop/bH2mZIyCVmAuj"
        "M5k3nAkg7ZbxomOR/wlmn3YdxCANIMmeQJJsIEQg4JmEIXoiEiKeHTwcEhlSI0QcoZ/SobAcjqCyJlumVBVZADkf"
        "z6CnHtohsaKYnLUZpx0/IrYQgB5SniaUVB2gI3QYyqH0Hg=="
    ),
}


@dataclass
class DetectedFace:
    """One face: its box in original-image pixels (x1, y1, x2, y2), MTCNN probability, crop."""

    box: tuple[float, float, float, float]
    probability: float
    crop: torch.Tensor = field(repr=False)  # (3, 160, 160), standardised as (x - 127.5) / 128
    landmarks: np.ndarray | None = field(default=None, repr=False)  # (5, 2) x, y in the original


@dataclass
class PhotoFaces:
    """All faces found in one photo, the primary face first (see ``rank_faces``)."""

    faces: list[DetectedFace]
    width: int
    height: int
    detection_ms: float

    @property
    def primary(self) -> DetectedFace | None:
        return self.faces[0] if self.faces else None


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


@dataclass
class Embeddings:
    """Unit-norm embeddings, one row per crop, and the time the forward pass took."""

    vectors: np.ndarray  # (n, 512) float32
    embedding_ms: float


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; otherwise the named device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


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


def decode_center(text: str) -> np.ndarray:
    """A base64 float16 vector from ``EMBEDDING_CENTERS`` as float32."""
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


def center_for(settings: Settings) -> np.ndarray | None:
    """The embedding centre ``settings`` ask for: the model's, or None (off, or none known)."""
    if not settings.center_embeddings:
        return None
    if settings.model not in EMBEDDING_CENTERS:
        log.warning(
            "no embedding centre is known for %s; embeddings are not centred", settings.model
        )
        return None
    return decode_center(EMBEDDING_CENTERS[settings.model])


def int8_path(settings: Settings) -> Path:
    """Where ``benchmarking_utils.quantize`` writes the int8 embedder of the configured model."""
    return settings.data_path / f"{settings.model}.int8.onnx"


def combine_flipped(vectors: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """The flipped-image embedding: the normalised sum of a crop's and its mirror's vectors."""
    total = vectors.astype(np.float32) + flipped.astype(np.float32)
    return total / np.linalg.norm(total, axis=1, keepdims=True)


class OnnxModel:
    """An ONNX Runtime session over a serialized graph with one input ``x``.

    A session with one intra-op thread owns no thread pool, so it is built at once and one built
    before Gunicorn forks its workers is shared by them (copy-on-write). A session with a thread
    pool must never exist in a process that forks (the child's next session hangs), so with more
    threads each process builds its own on first use.
    """

    def __init__(self, graph: bytes, threads: int):
        import onnxruntime  # noqa: F401 - fail at start-up, not on the first request

        self.threads = max(1, threads)
        self._graph: bytes | None = graph
        self._lock = threading.Lock()
        self._session, self._pid = None, 0
        if self.threads == 1:
            self._session, self._pid, self._graph = self._build(), os.getpid(), None

    def _build(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(
            self._graph, options, providers=["CPUExecutionProvider"]
        )

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the graph on ``x`` (float32); the outputs in the graph's order."""
        if self._graph is not None and self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._session, self._pid = self._build(), os.getpid()
        return self._session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})


class _OnnxStage(torch.nn.Module):
    """Stands in for one of MTCNN's P/R/O-nets inside facenet-pytorch's ``detect_face``."""

    def __init__(self, model: OnnxModel):
        super().__init__()
        self.model = model
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # dtype probe

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(out) for out in self.model.run(x.cpu().numpy()))


def _standardise(pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 pixels to MTCNN's (3, h, w) float32 input."""
    return ((pixels.astype(np.float32) - 127.5) * 0.0078125).transpose(2, 0, 1)


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
                _standardise(
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
    pnet: OnnxModel,
    rnet: OnnxModel,
    onet: OnnxModel,
    thresholds: list[float],
    factor: float,
) -> Detections:
    """facenet-pytorch's ``detect_face`` for one image, with its networks in ONNX Runtime and
    every resampling done by Pillow's area (BOX) filter instead of per-box PyTorch calls.

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
        reg, prob = pnet.run(_standardise(np.asarray(level))[None])
        boxes, _ = generateBoundingBox(
            torch.from_numpy(reg), torch.from_numpy(prob[:, 1]), scale, thresholds[0]
        )
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
    reg, prob = (torch.from_numpy(a) for a in rnet.run(batch))
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
    reg, points, prob = (torch.from_numpy(a) for a in onet.run(batch))
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


def export_onnx(module: torch.nn.Module, example: torch.Tensor, dynamic: dict) -> bytes:
    """Serialize ``module`` to an ONNX graph (TorchScript exporter) with input ``x``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            buffer,
            input_names=["x"],
            dynamic_axes={"x": dynamic},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


class FaceEngine:
    """Owns MTCNN and InceptionResnetV1; turns RGB images into faces and faces into embeddings."""

    def __init__(
        self,
        state_dict: dict[str, torch.Tensor],
        model_name: str,
        device: torch.device,
        margin: int = 32,
        face_selection: str = "center_weighted_size",
        detect_max_side: int = 0,
        flip_embeddings: bool = False,
        embed_backend: str = "torch",
        detect_backend: str = "torch",
        threads: int = 1,
        min_face_size: int = 20,
        center: np.ndarray | None = None,
        int8_graph: bytes | None = None,
        align_faces: bool = False,
    ):
        if face_selection not in SELECTION_METHODS:
            raise ValueError(f"unknown face selection {face_selection!r}")
        if embed_backend not in EMBED_BACKENDS:
            raise ValueError(
                f"unknown embed_backend {embed_backend!r}; expected one of {EMBED_BACKENDS}"
            )
        if detect_backend not in BACKENDS:
            raise ValueError(
                f"unknown detect_backend {detect_backend!r}; expected one of {BACKENDS}"
            )
        if embed_backend == "onnx-int8" and int8_graph is None:
            raise ValueError(f"embed_backend onnx-int8 needs the int8 graph ({INT8_BUILD})")
        if device.type != "cpu":
            embed_backend = detect_backend = "torch"  # ONNX Runtime here is the CPU build
        self.model_name = model_name
        self.device = device
        self.margin = margin
        self.face_selection = face_selection
        self.detect_max_side = detect_max_side
        self.flip_embeddings = flip_embeddings
        self.embed_backend = embed_backend
        self.detect_backend = detect_backend
        self.center = None if center is None else np.asarray(center, dtype=np.float32)
        self.min_face_size = min_face_size
        self.align_faces = align_faces
        self.detector = MTCNN(
            image_size=FACE_SIZE,
            margin=margin,
            min_face_size=min_face_size,
            thresholds=[0.6, 0.7, 0.7],
            factor=0.709,
            post_process=True,
            keep_all=True,
            device=device,
        ).eval()
        embedder = InceptionResnetV1(pretrained=None, classify=False).eval()
        embedder.load_state_dict(state_dict)
        self.embedder: InceptionResnetV1 | None = embedder.to(device)
        self.onnx_embedder: OnnxModel | None = None
        if embed_backend != "torch":
            graph = (
                int8_graph
                if embed_backend == "onnx-int8"
                else export_onnx(embedder, torch.zeros(1, 3, FACE_SIZE, FACE_SIZE), {0: "n"})
            )
            self.onnx_embedder = OnnxModel(graph, threads)
            self.embedder = None  # the session holds the weights; do not keep two copies
        self.stages = self._detector_to_onnx(threads) if detect_backend != "torch" else None
        if detect_backend == "onnx":
            self.detector.pnet, self.detector.rnet, self.detector.onet = (
                _OnnxStage(stage) for stage in self.stages
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> FaceEngine:
        """Load the configured weights (``WeightsError`` if missing or wrong); build the engine."""
        threads = settings.torch_threads or _default_threads(settings.workers)
        torch.set_num_threads(1)  # OpenMP's pool, once started, would not survive a fork
        path: Path = resolve_weights(settings.model, settings.weights, settings.data_path)
        device = pick_device(settings.device)
        log.info(
            "loading %s weights from %s onto %s (%d threads, embed %s, detect %s)",
            settings.model,
            path,
            device,
            threads,
            settings.embed_backend,
            settings.detect_backend,
        )
        int8_graph = None
        if settings.embed_backend == "onnx-int8":
            int8_file = int8_path(settings)
            if not int8_file.is_file():
                raise ValueError(
                    f"FACEMATCH_EMBED_BACKEND=onnx-int8 needs {int8_file};"
                    f" build it with {INT8_BUILD}"
                )
            int8_graph = int8_file.read_bytes()
        engine = cls(
            load_state_dict(path),
            model_name=settings.model,
            device=device,
            margin=settings.margin,
            face_selection=settings.face_selection,
            detect_max_side=settings.detect_max_side,
            flip_embeddings=settings.flip_embeddings,
            embed_backend=settings.embed_backend,
            detect_backend=settings.detect_backend,
            threads=threads,
            min_face_size=settings.min_face_size,
            center=center_for(settings),
            int8_graph=int8_graph,
            align_faces=settings.align_faces,
        )
        torch.set_num_threads(threads)
        return engine

    def detect(self, image: Image.Image) -> PhotoFaces:
        """Find every face in an RGB image; the primary face (by ``face_selection``) first."""
        start = time.perf_counter()
        faces = self.faces_from(image, self.find_faces(image))
        return PhotoFaces(faces, image.width, image.height, (time.perf_counter() - start) * 1000)

    def find_faces(self, image: Image.Image) -> Detections:
        """Run MTCNN (on a downscaled copy if ``detect_max_side`` asks) and map its boxes and
        landmarks back to the original image's pixels.

        When nothing is found and ``min_face_size`` is above MTCNN's usual 20 pixels, the search
        is repeated at 20, so small faces cost time only in photos without a larger one."""
        search, scale = self.search_image(image)
        found = self._mtcnn(search, self.min_face_size)
        if not len(found.boxes) and self.min_face_size > RETRY_MIN_FACE_SIZE:
            found = self._mtcnn(search, RETRY_MIN_FACE_SIZE)
        return Detections(found.boxes / scale, found.probs, found.landmarks / scale)

    def _mtcnn(self, search: Image.Image, min_face_size: int) -> Detections:
        """MTCNN's three stages on ``search`` for faces of at least ``min_face_size`` pixels."""
        if min(search.size) < min_face_size:
            return Detections.empty()  # no face fits; MTCNN itself would raise on so small an image
        d = self.detector
        with torch.inference_mode():
            if self.detect_backend == "onnx-pil":
                return mtcnn_pil(search, min_face_size, *self.stages, d.thresholds, d.factor)
            boxes, points = detect_face(
                search, min_face_size, d.pnet, d.rnet, d.onet, d.thresholds, d.factor, d.device
            )
        boxes, points = np.asarray(boxes[0], dtype=np.float64), np.asarray(points[0])
        if not len(boxes):
            return Detections.empty()
        return Detections(
            boxes[:, :4].reshape(-1, 4),
            boxes[:, 4].reshape(-1),
            points.astype(np.float64).reshape(-1, 5, 2),
        )

    def search_image(self, image: Image.Image) -> tuple[Image.Image, float]:
        """The image MTCNN searches and its scale: the original, or a copy whose longer side is
        ``detect_max_side`` (integer box reduction first, then bilinear, for speed)."""
        width, height = image.size
        if not self.detect_max_side or max(width, height) <= self.detect_max_side:
            return image, 1.0
        scale = self.detect_max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return image.resize(size, Image.BILINEAR, reducing_gap=1.0), scale

    def faces_from(self, image: Image.Image, found: Detections) -> list[DetectedFace]:
        """Rank detections by ``face_selection`` and cut each face from the original image."""
        order = (
            rank_faces(found.boxes, found.probs, image.width, image.height, self.face_selection)
            if len(found.boxes)
            else []
        )
        faces = []
        for i in order:
            box = tuple(float(v) for v in found.boxes[i])
            crop = (
                self._aligned_crop(image, box, found.landmarks[i])
                if self.align_faces
                else self._crop(image, box)
            )
            faces.append(DetectedFace(box, float(found.probs[i]), crop, found.landmarks[i]))
        return faces

    def embed(self, crops: list[torch.Tensor]) -> Embeddings:
        """Embed face crops in one forward pass; returns unit-norm (n, 512) float32 vectors.

        With ``flip_embeddings`` the mirrored crops ride in the same batch."""
        start = time.perf_counter()
        batch = torch.stack(crops)
        if self.flip_embeddings:
            vectors = self.forward(torch.cat([batch, torch.flip(batch, dims=[3])]))
            vectors = self.finish(vectors[: len(crops)], vectors[len(crops) :])
        else:
            vectors = self.finish(self.forward(batch))
        return Embeddings(vectors, (time.perf_counter() - start) * 1000)

    def finish(self, plain: np.ndarray, flipped: np.ndarray | None = None) -> np.ndarray:
        """The served embedding from the network's unit vectors: combined with the mirrored
        crop's (when given), minus the model's centre (when configured), unit norm."""
        vectors = plain if flipped is None else combine_flipped(plain, flipped)
        if self.center is not None:
            vectors = vectors - self.center
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """InceptionResnetV1 on a (n, 3, 160, 160) batch: unit-norm (n, 512) float32."""
        if self.onnx_embedder is not None:
            return self.onnx_embedder.run(batch.numpy())[0]
        with torch.inference_mode():
            return self.embedder(batch.to(self.device)).float().cpu().numpy()

    def _crop(self, image: Image.Image, box: tuple[float, float, float, float]) -> torch.Tensor:
        """Cut the face with the margin from the original image, 160x160, standardised."""
        face = extract_face(image, np.asarray(box), FACE_SIZE, self.margin)
        return (face - 127.5) / 128.0

    def _aligned_crop(
        self, image: Image.Image, box: tuple[float, float, float, float], landmarks: np.ndarray
    ) -> torch.Tensor:
        """Like ``_crop``, but rotated about the box centre so that the eyes are level (outside
        the photo is black rather than clamped)."""
        x1, y1, x2, y2 = box
        width = (x2 - x1) * FACE_SIZE / (FACE_SIZE - self.margin)
        height = (y2 - y1) * FACE_SIZE / (FACE_SIZE - self.margin)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        radius = int(np.ceil(np.hypot(width, height) / 2)) + 1
        region = image.crop(
            (round(cx) - radius, round(cy) - radius, round(cx) + radius, round(cy) + radius)
        )
        (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
        angle = float(np.degrees(np.arctan2(ry - ly, rx - lx)))
        level = region.rotate(
            angle,
            resample=Image.BILINEAR,
            center=(radius + cx - round(cx), radius + cy - round(cy)),
        )
        cx, cy = radius + cx - round(cx), radius + cy - round(cy)
        face = level.crop(
            (int(cx - width / 2), int(cy - height / 2), int(cx + width / 2), int(cy + height / 2))
        ).resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)
        return torch.from_numpy(_standardise(np.asarray(face)))

    def _detector_to_onnx(self, threads: int) -> tuple[OnnxModel, OnnxModel, OnnxModel]:
        """ONNX Runtime sessions for MTCNN's P-, R- and O-nets, exported from facenet-pytorch's."""
        shapes = {
            "pnet": ((1, 3, 48, 64), {0: "n", 2: "h", 3: "w"}),
            "rnet": ((2, 3, 24, 24), {0: "n"}),
            "onet": ((2, 3, 48, 48), {0: "n"}),
        }
        return tuple(
            OnnxModel(
                export_onnx(getattr(self.detector, name), torch.zeros(shape), dynamic), threads
            )
            for name, (shape, dynamic) in shapes.items()
        )


def _default_threads(workers: int) -> int:
    """Split the machine's cores between Gunicorn workers; at least one thread each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))
