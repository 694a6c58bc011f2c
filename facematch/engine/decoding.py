"""Uploaded bytes to an upright RGB image, refusing what should not be decoded.

Only the formats that cameras and phones produce are opened: JPEG, PNG and WebP (``FORMATS``).
Before any pixel is decoded, the header is checked against two limits: the pixel count
(``max_pixels``) and the memory the decode would take (``decode_cost``: pixels x the bytes per
pixel of the decoded mode, the decoder's own buffers and the conversion to RGB), which may not
exceed what a ``max_pixels`` RGB photo costs (``BUDGET_BYTES_PER_PIXEL`` bytes a pixel). A JPEG
may have at most ``MAX_JPEG_SCANS`` scans, counted before decoding, because every scan of a
progressive JPEG costs a pass over the whole image. Every failure of the decoder is a 415.
EXIF orientation is applied, so a phone photo taken sideways is detected upright. Animated
images use their first frame.

``decode_photo`` decodes a large JPEG at a reduced scale (libjpeg's DCT scaling: 1/4 or 1/8,
Pillow's ``draft``), the smallest that keeps the longer side at least the ``min_side`` the
detector searches at, after every check above has passed on the full size (a reduced decode
takes less memory and the same scans). The ``DecodedPhoto`` keeps the full upright size, and
gives a finer decode of itself, with the same checks, when a face would otherwise be cut from
too few pixels (``at_reduction``: a new ``DecodedPhoto``, the first one unchanged).
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field, replace

from PIL import ExifTags, Image

from facematch.errors import ImageTooLarge, UnsupportedImage

# The checks below replace Pillow's global bomb guard, which knows nothing of the decoded mode.
Image.MAX_IMAGE_PIXELS = None

#: Pillow format names opened; anything else (GIF, TIFF, BMP, ICO, ...) is a 415.
FORMATS = ("JPEG", "PNG", "WEBP")
#: Memory one image may take while decoded and turned upright, per allowed pixel: an RGB photo
#: (4 bytes a pixel in Pillow) plus its rotated copy.
BUDGET_BYTES_PER_PIXEL = 8
#: libjpeg's default progression has 10 scans; thousands make a small file cost seconds of CPU.
MAX_JPEG_SCANS = 100

_STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2}  # every other mode is 4 bytes a pixel
_RGBA_MODES = ("RGBA", "LA", "PA")
# Bytes a pixel that converting a mode to RGB allocates while the decoded image is alive: 16-bit
# grey passes through a rescaled 16-bit copy and 8-bit grey, modes with alpha through an RGBA
# copy and a white background (P counted as if it had transparency).
_CONVERSION_BYTES = {"I;16": 1 + 4, "RGBA": 4, "LA": 8, "PA": 8, "P": 8}
_WEBP_DECODER_BYTES = 12  # libwebp's two RGBA canvases and the frame copied out of them
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_ROTATIONS = {  # EXIF orientation -> the transposition that makes the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: libjpeg's DCT scaling denominators used, coarsest first. Not 1/2: measured on 1280x720 and
#: 1920x1080 photos it saved 2-20 ms a photo, faces there were then cut from a second, full
#: decode anyway, and its detection copy moved boxes by up to 5% of their side.
JPEG_REDUCTIONS = (8, 4)
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the image a quarter
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
# The end of a JPEG's entropy-coded data: 0xFF followed by neither stuffing (00) nor a restart.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_ANY_MARKER = re.compile(rb"\xff[^\x00\xff]")


def decode_image(data: bytes, max_pixels: int, name: str = "image") -> Image.Image:
    """Decode ``data`` (JPEG, PNG or WebP) into an upright RGB ``PIL.Image``.

    Raises ``UnsupportedImage`` (415) for empty, unknown, corrupt or over-complex data and
    ``ImageTooLarge`` (413) when the declared width x height exceeds ``max_pixels`` or its
    decoding would take more than ``max_pixels * BUDGET_BYTES_PER_PIXEL`` bytes.
    """
    return _decode(data, max_pixels, name, 0, 1)[0]


@dataclass
class DecodedPhoto:
    """An upright RGB photo decoded at ``1 / reduction`` of its size (``image``), its full
    upright ``width`` and ``height``, and what a finer decode needs."""

    image: Image.Image
    width: int
    height: int
    reduction: int
    data: bytes = field(repr=False)
    max_pixels: int
    name: str

    @property
    def scale(self) -> tuple[float, float]:
        """Full-size pixels per pixel of ``image``, across and down."""
        return self.width / self.image.width, self.height / self.image.height

    def at_reduction(self, reduction: int) -> DecodedPhoto:
        """The photo at ``1 / reduction`` or finer: itself, or decoded again into a new one
        (every check of ``decode_image`` applies)."""
        if reduction >= self.reduction:
            return self
        image, reduction, _ = _decode(self.data, self.max_pixels, self.name, 0, reduction)
        return replace(self, image=image, reduction=reduction)


def decode_photo(data: bytes, max_pixels: int, name: str = "image", min_side: int = 0):
    """``decode_image``, as a ``DecodedPhoto``: a JPEG whose longer side is at least four times
    ``min_side`` is decoded at the coarsest of ``JPEG_REDUCTIONS`` that keeps its longer side at
    least ``min_side`` (0: always in full)."""
    image, reduction, (width, height) = _decode(data, max_pixels, name, min_side)
    return DecodedPhoto(image, width, height, reduction, data, max_pixels, name)


def _decode(
    data: bytes, max_pixels: int, name: str, min_side: int, reduction: int = 0
) -> tuple[Image.Image, int, tuple[int, int]]:
    """The checks and the decode: (upright RGB image, its reduction, the full upright size).
    ``reduction``, when given, is used as it is; otherwise it is chosen from ``min_side``."""
    image = _opened(data, max_pixels, name)
    width, height = image.size
    if not reduction:
        reduction = _reduction(image.format, max(width, height), min_side)
    if reduction > 1 and image.format == "JPEG":
        _pillow(name, image.draft, None, (width // reduction, height // reduction))
    if getattr(image, "is_animated", False):
        _pillow(name, image.seek, 0)
    _pillow(name, image.load)
    orientation = _pillow(name, image.getexif).get(ExifTags.Base.Orientation, 1)
    image = _pillow(
        name, _to_rgb, image
    )  # the decoded image and its decoder's buffers are freed here
    if orientation in _ROTATIONS:
        image = _pillow(name, image.transpose, _ROTATIONS[orientation])
    upright = (height, width) if orientation in _SWAPS_SIDES else (width, height)
    return image, reduction, upright


def check_photo(data: bytes, max_pixels: int, name: str = "image") -> None:
    """``decode_image``'s checks from the header alone, nothing decoded: a request with several
    photos refuses any of them before decoding the first (same errors)."""
    _opened(data, max_pixels, name).close()


def _opened(data: bytes, max_pixels: int, name: str) -> Image.Image:
    """``data`` opened (its header read, not decoded) once it passes the size checks."""
    if not data:
        raise UnsupportedImage(f"'{name}' is empty")
    jpeg_coefficients = _jpeg_coefficient_bytes(data, name) if data[:2] == b"\xff\xd8" else 0.0
    image = _pillow(name, Image.open, io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"'{name}' is {width}x{height} pixels; the limit is {max_pixels} pixels"
        )
    cost = decode_cost(image.format, image.mode, width * height, jpeg_coefficients)
    budget = max_pixels * BUDGET_BYTES_PER_PIXEL
    if cost > budget:
        raise ImageTooLarge(
            f"'{name}' ({width}x{height} {image.format} {image.mode}) would take "
            f"{cost / 2**20:.0f} MiB to decode; the limit is {budget / 2**20:.0f} MiB"
        )
    return image


def _reduction(fmt: str, longer: int, min_side: int) -> int:
    """The coarsest JPEG reduction that keeps the longer side at least ``min_side`` (1: none)."""
    if fmt != "JPEG" or not min_side:
        return 1
    return next((r for r in JPEG_REDUCTIONS if longer // r >= min_side), 1)


def decode_cost(fmt: str, mode: str, pixels: int, jpeg_coefficients: float = 0.0) -> float:
    """Peak bytes that decoding a ``pixels`` image of ``fmt``/``mode`` and turning it into an
    upright RGB image takes: the largest of the decode (the image plus the decoder's buffers:
    the coefficients of a multi-scan JPEG, libwebp's canvases), the RGB conversion and the
    rotation (a copy of the RGB image).
    """
    decoded = _STORAGE_BYTES.get(mode, 4) + (
        _WEBP_DECODER_BYTES if fmt == "WEBP" else jpeg_coefficients
    )
    if mode == "RGB":
        return pixels * max(decoded + 4, 8)  # the decoded image itself is rotated
    return pixels * max(decoded + _CONVERSION_BYTES.get(mode, 4), 8)


def _pillow(name: str, call, *args, **kwargs):
    """Run a Pillow call on client data; whatever it raises means the data is not a usable image
    (Pillow's plugins raise many types for hostile files, MemoryError included)."""
    try:
        return call(*args, **kwargs)
    except Exception:
        raise UnsupportedImage(
            f"'{name}' is not a decodable JPEG, PNG or WebP image ({', '.join(FORMATS)} are "
            "accepted)"
        ) from None


def _jpeg_coefficient_bytes(data: bytes, name: str) -> float:
    """Walk a JPEG's markers without decoding: refuse more than ``MAX_JPEG_SCANS`` scans and
    return the bytes per pixel libjpeg holds for the coefficients of a progressive or multi-scan
    image (0 for a single-scan one, which is decoded a row of blocks at a time)."""
    scans, position, per_pixel, progressive = 0, 2, 0.0, False
    while position + 4 <= len(data):
        if data[position] != 0xFF:  # libjpeg skips stray bytes to the next marker: so do we
            found = _ANY_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
        marker = data[position + 1]
        if marker == 0xFF or marker in _STANDALONE_MARKERS:
            position += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:  # end of image
            break
        (length,) = struct.unpack_from(">H", data, position + 2)
        segment = data[position + 4 : position + 2 + length]
        position += 2 + length
        if marker in _SOF_MARKERS:
            per_pixel = _coefficients_per_pixel(segment)
            progressive = marker in _PROGRESSIVE_SOF
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise UnsupportedImage(
                    f"'{name}' is a JPEG of more than {MAX_JPEG_SCANS} scans; "
                    f"at most {MAX_JPEG_SCANS} are accepted"
                )
            found = _NEXT_MARKER.search(data, position)
            position = found.start() if found else len(data)
    return per_pixel if progressive or scans > 1 else 0.0


def _coefficients_per_pixel(frame: bytes) -> float:
    """Bytes per image pixel of the 16-bit DCT coefficients of every component in a start-of-
    frame segment (a subsampled component has fewer), rounded up for edge blocks."""
    count = min(frame[5], (len(frame) - 6) // 3) if len(frame) >= 6 else 0
    factors = [(frame[7 + 3 * i] >> 4, frame[7 + 3 * i] & 15) for i in range(count)]
    factors = [f for f in factors if f[0] and f[1]]
    if not factors:
        return 0.0  # a frame the decoder will refuse
    h_max = max(h for h, _ in factors)
    v_max = max(v for _, v in factors)
    return 2.0 * sum(h * v / (h_max * v_max) for h, v in factors) * 1.1


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded mode to 8-bit RGB; 16-bit grey is rescaled (not clipped) and
    transparency is flattened onto white."""
    if image.mode == "RGB":
        return image
    if image.mode == "I;16":
        return image.point(lambda value: value / 257).convert("L").convert("RGB")
    if image.mode in _RGBA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba)
        return background
    return image.convert("RGB")
