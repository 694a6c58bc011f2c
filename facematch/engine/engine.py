"""The face engine the server holds: photos in, ranked faces and their embeddings out.

``FaceEngine`` loads the networks once and owns them; every request shares it (Gunicorn
``preload`` shares it across workers too). It joins the engine's parts, each in its own module:

* ``options``: every option, frozen and validated, built from ``Settings``;
* ``detection``: MTCNN's networks and search (``FaceDetector``), the face ranking;
* ``crops``: plain and aligned 160x160 crops from the original image (``FaceCropper``);
* ``embedding``: InceptionResnetV1, the mirrored crop, centring (``FaceEmbedder``);
* ``backends``: where each network runs (PyTorch, ONNX Runtime, ONNX Runtime int8);
* ``weights``: finding and checking the InceptionResnetV1 state_dict;
* ``compute_slots``: the threads a request's independent work runs on (both photos detected
  at once, a batch embedded in halves), never more at once than the machine has cores;
* ``kernel_checks``: the int8 embedder checked on this CPU at start (``kernel_check``), the
  float32 embedder serving instead where it fails.

With the ONNX Runtime backends and graphs built at set-up, nothing here imports PyTorch.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from facematch.config import Settings
from facematch.engine.backends.graph_files import graph_path
from facematch.engine.backends.onnx_int8_runtime import PROBE_TOLERANCE, load_probe
from facematch.engine.backends.onnx_runtime import OnnxRuntime
from facematch.engine.compute_slots import ComputeSlots, usable_cores
from facematch.engine.crops import FaceCropper
from facematch.engine.decoding import DecodedPhoto
from facematch.engine.detection import Detections, FaceDetector, rank_faces
from facematch.engine.embedding import Embeddings, FaceEmbedder, embedder_network
from facematch.engine.kernel_checks import NOT_NEEDED, KernelCheck, cosine_error, judge
from facematch.engine.options import FACE_SIZE, EngineOptions
from facematch.engine.weights import WeightsError, resolve_weights

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "DetectedFace",
    "Detections",
    "Embeddings",
    "EngineOptions",
    "FaceEngine",
    "PhotoFaces",
]

log = logging.getLogger(__name__)


@dataclass
class DetectedFace:
    """One face: its box in original-image pixels (x1, y1, x2, y2), MTCNN probability, crop."""

    box: tuple[float, float, float, float]
    probability: float
    crop: np.ndarray = field(repr=False)  # (3, 160, 160) float32, standardised (x - 127.5) / 128
    landmarks: np.ndarray | None = field(default=None, repr=False)  # (5, 2) x, y in the original


@dataclass
class PhotoFaces:
    """All faces found in one photo, the primary face first (see ``rank_faces``); the image
    they were cut from (``source``: the photo, or a finer decode of it) and the milliseconds
    of detection and of that finer decode."""

    faces: list[DetectedFace]
    width: int
    height: int
    detection_ms: float
    decode_ms: float = 0.0
    source: Image.Image | DecodedPhoto | None = field(default=None, repr=False)

    @property
    def primary(self) -> DetectedFace | None:
        return self.faces[0] if self.faces else None


def served_weights(settings: Settings, options: EngineOptions, uses_torch: bool) -> Path | None:
    """The weights file the settings name (``resolve_weights``), or None where the data dir's
    file is absent but the embedder's graphs were built and nothing runs in PyTorch: the
    default image ships the graphs only (docs/deployment.md). Otherwise ``WeightsError``."""
    try:
        return resolve_weights(settings.model, settings.weights, settings.data_path)
    except WeightsError:
        built = (options.int8_graph, graph_path(settings.data_path, settings.model))
        if settings.weights or uses_torch or not any(path.is_file() for path in built):
            raise
    log.info(
        "no %s weights file in %s: serving the graphs built from it at set-up",
        settings.model,
        settings.data_path,
    )
    return None


class FaceEngine:
    """Turns RGB images into ranked faces and faces into embeddings, as ``options`` say."""

    def __init__(
        self,
        options: EngineOptions,
        weights: Path | None,
        state_dict: dict | None = None,
        cores: int | None = None,
    ):
        """The engine of ``options`` over the InceptionResnetV1 weights file ``weights`` (read
        only when PyTorch runs the embedder or its graph was not built; None: not installed,
        the built graphs serve, see ``served_weights``; ``state_dict``, when
        given, is used instead of reading it); ``cores``: the compute threads (default: the
        machine's)."""
        self.options = options
        self.slots = ComputeSlots(usable_cores() if cores is None else cores)
        self.detector = FaceDetector.from_options(options)
        self.cropper = FaceCropper.from_options(options)
        self._network = embedder_network(options.model, weights, state_dict)
        self.embedder = FaceEmbedder.from_options(options, self._network)
        self._kernel_check: KernelCheck | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> FaceEngine:
        """Find the configured weights (``WeightsError`` if missing or wrong); build the engine
        (``ConfigError`` naming the variable when an option cannot be used)."""
        options = EngineOptions.from_settings(settings)
        uses_torch = "torch" in (options.embed_backend, options.detect_runtime)
        if uses_torch or "torch" in sys.modules:
            import torch

            torch.set_num_threads(1)  # OpenMP's pool, once started, would not survive a fork
        path = served_weights(settings, options, uses_torch)
        log.info(
            "loading %s weights from %s onto %s (%d threads, embed %s, detect %s)",
            options.model,
            path or "its built graphs",
            options.device,
            options.threads,
            options.embed_backend,
            options.detect_backend,
        )
        engine = cls(options, path)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(options.threads)
        return engine

    @property
    def model_name(self) -> str:
        return self.options.model

    @property
    def device(self) -> str:
        """The device the engine's PyTorch parts (if any) run on: ``cpu``, ``cuda``, ..."""
        return self.options.device

    def concurrently(self, work: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``work`` on every item on the engine's compute threads, results in order (the first
        failing item's exception is raised). Used for the photos of one request."""
        return self.slots.map(work, items)

    def detect(self, photo: Image.Image | DecodedPhoto) -> PhotoFaces:
        """Find every face in an RGB image, or a photo decoded at a reduced scale; the primary
        face (by ``face_selection``) first; boxes in the full photo's pixels. Three steps, each
        timed: search, a finer decode where a face is too small in a reduced one
        (``finer_decode``), cutting the faces from it."""
        start = time.perf_counter()
        found = self.find_faces(photo)
        searched = time.perf_counter()
        source = self.finer_decode(photo, found.boxes)
        decoded = time.perf_counter()
        faces = self.faces_from(source, found)
        detection_ms = (searched - start + time.perf_counter() - decoded) * 1000
        decode_ms = (decoded - searched) * 1000
        return PhotoFaces(faces, photo.width, photo.height, detection_ms, decode_ms, source)

    def find_faces(self, photo: Image.Image | DecodedPhoto) -> Detections:
        """The detector's faces, unranked, in the full photo's pixels."""
        if isinstance(photo, Image.Image):
            return self.detector.find_faces(photo)
        found = self.detector.find_faces(photo.image)
        sx, sy = photo.scale
        return Detections(
            found.boxes * np.array([sx, sy, sx, sy]), found.probs, found.landmarks * [sx, sy]
        )

    def faces_from(
        self, photo: Image.Image | DecodedPhoto, found: Detections
    ) -> list[DetectedFace]:
        """Rank detections (full-photo pixels) by ``face_selection`` and cut each face from
        ``photo`` at its own scale (``finer_decode`` picks a decode fine enough)."""
        order = (
            rank_faces(
                found.boxes, found.probs, photo.width, photo.height, self.options.face_selection
            )
            if len(found.boxes)
            else []
        )
        if isinstance(photo, Image.Image):
            image, (sx, sy) = photo, (1.0, 1.0)
        else:
            image, (sx, sy) = photo.image, photo.scale
        faces = []
        for i in order:
            box = tuple(float(v) for v in found.boxes[i])
            landmarks = found.landmarks[i]
            scaled = (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy)
            crop = self.cropper.crop(image, scaled, landmarks / [sx, sy])
            faces.append(DetectedFace(box, float(found.probs[i]), crop, landmarks))
        return faces

    def finer_decode(
        self, photo: Image.Image | DecodedPhoto, boxes: np.ndarray
    ) -> Image.Image | DecodedPhoto:
        """What the faces at ``boxes`` (full-photo pixels) are cut from: the photo itself, or
        the coarsest decode of it in which every face's crop region (the box grown by the
        margin) is at least ``FACE_SIZE`` pixels on its shorter side, the full decode when a
        face is smaller than that."""
        if isinstance(photo, Image.Image) or not len(boxes):
            return photo
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        region = float(sides.min()) * FACE_SIZE / (FACE_SIZE - self.options.margin)
        reduction = photo.reduction
        while reduction > 1 and region / reduction < FACE_SIZE:
            reduction //= 2
        return photo.at_reduction(reduction)

    def kernel_check(self) -> KernelCheck:
        """The int8 embedder's check on this CPU, run once (``create_app`` runs it at start):
        the int8 graph's vectors for the probe crops against float32's (``PROBE_TOLERANCE``),
        one crop a run as a request's halves run. Where it fails,
        the float32 graph embeds from then on, under the same threshold and calibration table
        (on a sound kernel the two agree within cosine 0.998)."""
        if self._kernel_check is None:
            self._kernel_check = self._check_embedder()
        return self._kernel_check

    def _check_embedder(self) -> KernelCheck:
        backend = self.options.embed_backend
        if backend != "onnx-int8":
            return KernelCheck("embedder", backend, NOT_NEEDED, 0.0, 0.0)
        crops, expected = load_probe(self.options.int8_graph)  # load_int8_runtime checked it
        # On a session of its own with one thread: the serving one may own a thread pool, and
        # none may exist in Gunicorn's master when it forks (onnx_runtime). Same graph, kernels.
        probe = OnnxRuntime(self.options.int8_graph, threads=1)
        vectors = np.concatenate([probe.run(crop[None])[0] for crop in crops])
        error = cosine_error(vectors, expected)
        check = judge("embedder", error, PROBE_TOLERANCE, backend, "onnx")
        if not check.passed:
            float32 = replace(self.options, embed_backend="onnx")
            self.embedder = FaceEmbedder.from_options(float32, self._network)
        return check

    def embed(self, crops: list[np.ndarray]) -> Embeddings:
        """Embed face crops; unit-norm (n, 512) float32 vectors. A batch is split in as many
        parts as there are compute threads, run at once."""
        return self.embedder.embed(crops, run=self._forward)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        parts = min(self.slots.cores, len(batch))
        if parts < 2 or self.options.embed_backend == "torch":
            return self.slots.run(self.embedder.forward, batch)
        return np.concatenate(self.slots.map(self.embedder.forward, np.array_split(batch, parts)))
