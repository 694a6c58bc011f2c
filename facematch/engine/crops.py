"""Face crops: each detected face cut from the original image as the embedder's 160x160 input.

A plain crop is facenet-pytorch's ``extract_face`` (the box grown by ``margin`` pixels of the
crop, clamped to the image, resized bilinearly by Pillow), computed here without PyTorch; an
aligned crop (``align_faces``) is also rotated about the box centre so that the eyes are level
(measured: it does not help this model). Both are standardised as ``(x - 127.5) / 128``, as
(3, 160, 160) float32 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from facematch.engine.options import FACE_SIZE, EngineOptions

Box = tuple[float, float, float, float]


def standardise(pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 pixels to the networks' (3, h, w) float32 input, ``(x - 127.5) / 128``."""
    return ((pixels.astype(np.float32) - 127.5) * 0.0078125).transpose(2, 0, 1)


@dataclass(frozen=True)
class FaceCropper:
    """Cuts faces with ``margin`` pixels around the box, aligned by the eyes when ``align``."""

    margin: int
    align: bool

    @classmethod
    def from_options(cls, options: EngineOptions) -> FaceCropper:
        return cls(options.margin, options.align_faces)

    def crop(self, image: Image.Image, box: Box, landmarks: np.ndarray) -> np.ndarray:
        """The (3, 160, 160) standardised crop of the face at ``box`` (original-image pixels)."""
        if self.align:
            return self.aligned_crop(image, box, landmarks)
        return self.plain_crop(image, box)

    def plain_crop(self, image: Image.Image, box: Box) -> np.ndarray:
        """Cut the face with the margin from the original image, 160x160, standardised."""
        return standardise(np.asarray(self.plain_face(image, box)))

    def plain_face(self, image: Image.Image, box: Box) -> Image.Image:
        """The 160x160 face of ``plain_crop`` as an image (``extract_face``'s arithmetic)."""
        x1, y1, x2, y2 = (float(v) for v in box)
        grow_x = self.margin * (x2 - x1) / (FACE_SIZE - self.margin)
        grow_y = self.margin * (y2 - y1) / (FACE_SIZE - self.margin)
        region = (
            int(max(x1 - grow_x / 2, 0)),
            int(max(y1 - grow_y / 2, 0)),
            int(min(x2 + grow_x / 2, image.width)),
            int(min(y2 + grow_y / 2, image.height)),
        )
        return image.crop(region).resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)

    def aligned_crop(self, image: Image.Image, box: Box, landmarks: np.ndarray) -> np.ndarray:
        """Like ``plain_crop``, but rotated about the box centre so that the eyes (the first two
        ``landmarks``) are level; outside the photo is black rather than clamped."""
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
        return standardise(np.asarray(face))
