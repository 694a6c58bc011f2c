"""The face engine the server holds: photos in, ranked faces and their embeddings out.

``FaceEngine`` loads the networks once and owns them; every request shares it (Gunicorn
``preload`` shares it across workers too). It joins the engine's parts, each in its own module:

* ``engine_options``: every option, frozen and validated, built from ``Settings``;
* ``face_detection``: MTCNN's networks and search (``FaceDetector``), the face ranking;
* ``face_crops``: plain and aligned 160x160 crops from the original image (``FaceCropper``);
* ``face_embedding``: InceptionResnetV1, the mirrored crop, centring (``FaceEmbedder``);
* ``runtime_backends``: where each network runs (PyTorch, ONNX Runtime, ONNX Runtime int8);
* ``model_weights``: finding and checking the InceptionResnetV1 state_dict.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from config import Settings
from engine_options import EngineOptions
from face_crops import FaceCropper
from face_detection import Detections, FaceDetector, rank_faces
from face_embedding import Embeddings, FaceEmbedder
from model_weights import load_state_dict, resolve_weights

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


class FaceEngine:
    """Turns RGB images into ranked faces and faces into embeddings, as ``options`` say."""

    def __init__(self, state_dict: dict[str, torch.Tensor], options: EngineOptions):
        self.options = options
        self.detector = FaceDetector.from_options(options)
        self.cropper = FaceCropper.from_options(options)
        self.embedder = FaceEmbedder.from_options(options, state_dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> FaceEngine:
        """Load the configured weights (``WeightsError`` if missing or wrong); build the engine
        (``ConfigError`` naming the variable when an option cannot be used)."""
        options = EngineOptions.from_settings(settings)
        torch.set_num_threads(1)  # OpenMP's pool, once started, would not survive a fork
        path = resolve_weights(settings.model, settings.weights, settings.data_path)
        log.info(
            "loading %s weights from %s onto %s (%d threads, embed %s, detect %s)",
            options.model,
            path,
            options.device,
            options.threads,
            options.embed_backend,
            options.detect_backend,
        )
        engine = cls(load_state_dict(path), options)
        torch.set_num_threads(options.threads)
        return engine

    @property
    def model_name(self) -> str:
        return self.options.model

    @property
    def device(self) -> torch.device:
        return torch.device(self.options.device)

    def detect(self, image: Image.Image) -> PhotoFaces:
        """Find every face in an RGB image; the primary face (by ``face_selection``) first."""
        start = time.perf_counter()
        faces = self.faces_from(image, self.detector.find_faces(image))
        return PhotoFaces(faces, image.width, image.height, (time.perf_counter() - start) * 1000)

    def faces_from(self, image: Image.Image, found: Detections) -> list[DetectedFace]:
        """Rank detections by ``face_selection`` and cut each face from the original image."""
        order = (
            rank_faces(
                found.boxes, found.probs, image.width, image.height, self.options.face_selection
            )
            if len(found.boxes)
            else []
        )
        faces = []
        for i in order:
            box = tuple(float(v) for v in found.boxes[i])
            crop = self.cropper.crop(image, box, found.landmarks[i])
            faces.append(DetectedFace(box, float(found.probs[i]), crop, found.landmarks[i]))
        return faces

    def embed(self, crops: list[torch.Tensor]) -> Embeddings:
        """Embed face crops in one forward pass; unit-norm (n, 512) float32 vectors."""
        return self.embedder.embed(crops)
