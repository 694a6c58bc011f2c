"""What ``POST /faces`` answers: every face found in a photo, described rather than decided.

Each face (primary-face order, see ``engine.detection.rank_faces``) gets its box, MTCNN
probability, five landmarks (eyes, nose, mouth corners) and a ``primary`` flag; with
``crops=true`` also the 160x160 crop the embedder would take, as a base64 JPEG, so a person sees
exactly what a match compares. A photo without a face is an empty list here, not the match
routes' 422. The form's options are parsed strictly into ``FacesOptions``.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facematch.engine.engine import DetectedFace, PhotoFaces
from facematch.errors import InvalidParameter

DEFAULT_MAX_FACES = 20
MAX_FACES_LIMIT = 100
CROP_JPEG_QUALITY = 90
_DIGITS = re.compile(r"[0-9]{1,3}")
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class FacesOptions:
    """What a ``/faces`` request asks for: the crops too, and at most how many faces."""

    crops: bool = False
    max_faces: int = DEFAULT_MAX_FACES

    def __post_init__(self):
        if not 1 <= self.max_faces <= MAX_FACES_LIMIT:
            raise ValueError(f"max_faces must be 1..{MAX_FACES_LIMIT}, not {self.max_faces}")

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> FacesOptions:
        """The options in a request's form: ``crops`` exactly ``true`` or ``false``,
        ``max_faces`` ASCII digits 1..100; absent means the default. ``InvalidParameter`` (400)
        for anything else, an empty value included."""
        crops = form.get("crops", "false")
        if crops not in _BOOLEANS:
            raise InvalidParameter("'crops' must be 'true' or 'false'")
        raw = form.get("max_faces", str(DEFAULT_MAX_FACES))
        value = int(raw) if _DIGITS.fullmatch(raw) else 0
        if not 1 <= value <= MAX_FACES_LIMIT:
            raise InvalidParameter(
                f"'max_faces' must be a whole number from 1 to {MAX_FACES_LIMIT}"
            )
        return cls(_BOOLEANS[crops], value)


def crop_pixels(crop: np.ndarray) -> Image.Image:
    """The embedder's standardised (3, 160, 160) crop, ``(x - 127.5) / 128``, back as an RGB
    image of the same size."""
    values = np.asarray(crop, dtype=np.float32) * 128.0 + 127.5
    pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def crop_jpeg(crop: np.ndarray) -> str:
    """A standardised crop as a base64 JPEG (what ``crop`` in the answer holds)."""
    buffer = io.BytesIO()
    crop_pixels(crop).save(buffer, "JPEG", quality=CROP_JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def face_json(face: DetectedFace, primary: bool, crops: bool) -> dict:
    """One face's box, probability, landmarks and primary flag (and crop, if ``crops``)."""
    landmarks = face.landmarks if face.landmarks is not None else np.zeros((0, 2))
    body = {
        "box": [round(float(v), 1) for v in face.box],
        "probability": float(face.probability),
        "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in landmarks],
        "primary": primary,
    }
    if crops:
        body["crop"] = crop_jpeg(face.crop)
    return body


def faces_json(found: PhotoFaces, options: FacesOptions) -> dict:
    """The answer's ``count``, ``faces`` (at most ``options.max_faces``, primary first) and
    ``image_size``."""
    faces = [
        face_json(face, index == 0, options.crops)
        for index, face in enumerate(found.faces[: options.max_faces])
    ]
    return {"count": len(faces), "faces": faces, "image_size": [found.width, found.height]}
