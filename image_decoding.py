"""Uploaded bytes to an upright RGB image, refusing what should not be decoded.

The pixel count is checked from the header before any pixel is decoded, so a decompression bomb
or a PNG declaring a huge canvas costs nothing. EXIF orientation is applied, so a phone photo
taken sideways is detected upright. Animated images use their first frame.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from errors import ImageTooLarge, UnsupportedImage

# The check below replaces Pillow's global bomb guard, which would otherwise only warn.
Image.MAX_IMAGE_PIXELS = None

_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def decode_image(data: bytes, max_pixels: int, name: str = "image") -> Image.Image:
    """Decode ``data`` into an RGB ``PIL.Image`` with EXIF orientation applied.

    Raises ``UnsupportedImage`` (415) for empty, unknown or corrupt data and ``ImageTooLarge``
    (413) when the declared width x height exceeds ``max_pixels``.
    """
    if not data:
        raise UnsupportedImage(f"'{name}' is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"'{name}' is {width}x{height} pixels; the limit is {max_pixels} pixels"
                )
            if getattr(image, "is_animated", False):
                image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (ImageTooLarge, UnsupportedImage):
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ):
        raise UnsupportedImage(f"'{name}' is not a decodable image") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; 16-bit and float images are rescaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        gray = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
