"""The face engine: finds faces with MTCNN and embeds them with InceptionResnetV1.

``FaceEngine`` loads both networks once and owns them; every request shares it (Gunicorn
``preload`` shares it across workers too). Inference runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import MTCNN, InceptionResnetV1
from facenet_pytorch.models.utils.detect_face import extract_face
from PIL import Image

from config import Settings
from deployment_utils.weights import load_state_dict, resolve_weights

log = logging.getLogger(__name__)

FACE_SIZE = 160
SELECTION_METHODS = ("center_weighted_size", "largest", "probability", "largest_over_threshold")


@dataclass
class DetectedFace:
    """One face: its box in original-image pixels (x1, y1, x2, y2), MTCNN probability, crop."""

    box: tuple[float, float, float, float]
    probability: float
    crop: torch.Tensor = field(repr=False)  # (3, 160, 160), standardised as (x - 127.5) / 128


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
    boxes: np.ndarray, probs: np.ndarray, width: int, height: int, method: str,
    center_weight: float = 2.0, threshold: float = 0.9,
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
    ):
        if face_selection not in SELECTION_METHODS:
            raise ValueError(f"unknown face selection {face_selection!r}")
        self.model_name = model_name
        self.device = device
        self.margin = margin
        self.face_selection = face_selection
        self.detect_max_side = detect_max_side
        self.flip_embeddings = flip_embeddings
        self.detector = MTCNN(
            image_size=FACE_SIZE, margin=margin, min_face_size=20, thresholds=[0.6, 0.7, 0.7],
            factor=0.709, post_process=True, keep_all=True, device=device,
        ).eval()
        self.embedder = InceptionResnetV1(pretrained=None, classify=False).eval()
        self.embedder.load_state_dict(state_dict)
        self.embedder.to(device)

    @classmethod
    def from_settings(cls, settings: Settings) -> "FaceEngine":
        """Load the configured weights (``WeightsError`` if missing or wrong) and build the engine."""
        threads = settings.torch_threads or _default_threads(settings.workers)
        torch.set_num_threads(threads)
        path: Path = resolve_weights(settings.model, settings.weights, settings.data_path)
        device = pick_device(settings.device)
        log.info("loading %s weights from %s onto %s (%d threads)",
                 settings.model, path, device, threads)
        return cls(
            load_state_dict(path), model_name=settings.model, device=device,
            margin=settings.margin, face_selection=settings.face_selection,
            detect_max_side=settings.detect_max_side, flip_embeddings=settings.flip_embeddings,
        )

    def detect(self, image: Image.Image) -> PhotoFaces:
        """Find every face in an RGB image; the primary face (by ``face_selection``) first."""
        start = time.perf_counter()
        width, height = image.size
        scale = 1.0
        search = image
        if self.detect_max_side and max(width, height) > self.detect_max_side:
            scale = self.detect_max_side / max(width, height)
            search = image.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR
            )
        with torch.inference_mode():
            boxes, probs = self.detector.detect(search)
        faces: list[DetectedFace] = []
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale
            probs = np.asarray(probs, dtype=np.float64).reshape(-1)
            for i in rank_faces(boxes, probs, width, height, self.face_selection):
                box = tuple(float(v) for v in boxes[i])
                faces.append(DetectedFace(box, float(probs[i]), self._crop(image, box)))
        return PhotoFaces(faces, width, height, (time.perf_counter() - start) * 1000)

    def embed(self, crops: list[torch.Tensor]) -> Embeddings:
        """Embed face crops in one forward pass; returns unit-norm (n, 512) float32 vectors."""
        start = time.perf_counter()
        with torch.inference_mode():
            batch = torch.stack(crops).to(self.device)
            vectors = self.embedder(batch)
            if self.flip_embeddings:
                vectors = vectors + self.embedder(torch.flip(batch, dims=[3]))
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            result = vectors.float().cpu().numpy()
        return Embeddings(result, (time.perf_counter() - start) * 1000)

    def _crop(self, image: Image.Image, box: tuple[float, float, float, float]) -> torch.Tensor:
        """Cut the face with the margin from the original image, 160x160, standardised."""
        face = extract_face(image, np.asarray(box), FACE_SIZE, self.margin)
        return (face - 127.5) / 128.0


def _default_threads(workers: int) -> int:
    """Split the machine's cores between Gunicorn workers; at least one thread each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))
