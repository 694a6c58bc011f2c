"""Benchmark inputs: LFW photos as they are, or placed on large canvases like phone photos.

A generated photo is the LFW image upscaled to half the canvas height and pasted at its centre
(LFW photos are centred on their subject, as a selfie or an ID photo is), on a background of
smooth colour blobs under a tiled sensor-like noise (no faces in it) drawn from the image's name,
saved as a quality-90 JPEG, so anyone with the same LFW files and Pillow/NumPy versions gets the
same bytes. Files are cached under ``benchmark_results/inputs/<WxH>/``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from deployment_utils.lfw import Pair, place_on_canvas

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmark_results" / "inputs"


@dataclass(frozen=True)
class Photo:
    """One benchmark input: its encoded bytes, a name, and its pixel size."""

    name: str
    data: bytes
    width: int
    height: int


def parse_size(text: str) -> tuple[int, int] | None:
    """``"lfw"`` (the original 250x250 files) gives None; ``"WxH"`` gives (W, H)."""
    if text == "lfw":
        return None
    width, height = text.lower().split("x")
    return int(width), int(height)


def photo_bytes(lfw: Path, name: str, size: tuple[int, int] | None) -> Photo:
    """The LFW image ``name`` as it is (``size`` None) or generated at ``size``, cached."""
    source = lfw / "images" / name
    if size is None:
        with Image.open(source) as image:
            return Photo(name, source.read_bytes(), image.width, image.height)
    path = CACHE / f"{size[0]}x{size[1]}" / name
    if not path.exists():
        with Image.open(source) as image:
            canvas = place_on_canvas(image.convert("RGB"), size, name)
        buffer = io.BytesIO()
        canvas.save(buffer, "JPEG", quality=90)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)  # atomic: a run beside this one never reads half a photo
    return Photo(name, path.read_bytes(), size[0], size[1])


def pair_photos(
    lfw: Path, pairs: list[Pair], size: tuple[int, int] | None, count: int
) -> list[tuple[Photo, Photo]]:
    """The first ``count`` pairs, alternating matched and mismatched, as photo bytes."""
    matched = [p for p in pairs if p.same]
    mismatched = [p for p in pairs if not p.same]
    chosen = [p for two in zip(matched, mismatched) for p in two][:count]
    return [(photo_bytes(lfw, p.first, size), photo_bytes(lfw, p.second, size)) for p in chosen]


def folder_photos(folder: Path, count: int) -> list[tuple[Photo, Photo]]:
    """Consecutive pairs of the photos in ``folder`` (sorted by name), up to ``count`` pairs."""
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")
    )
    photos = []
    for path in files[: 2 * count]:
        with Image.open(path) as image:
            photos.append(Photo(str(path.relative_to(folder)), path.read_bytes(), *image.size))
    return list(zip(photos[0::2], photos[1::2]))
