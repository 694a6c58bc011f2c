"""Hostile files made on the fly for the crafted-input, fuzzing and memory tests (none is
committed): images in formats facematch refuses or with headers that lie, and references whose
structure would allocate or crash. Each function returns the bytes of one upload."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zipfile
import zlib

import torch
from PIL import Image

from tests.support import image_bytes, png_declaring

HUGE = 2**31 - 1


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit colour), ``rows`` already filtered."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    data = compressor.compress(rows) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def grey16_png(width: int, height: int) -> bytes:
    """A blank 16-bit grey PNG of ``width`` x ``height`` that compresses to a few dozen KB."""
    rows = (b"\0" + b"\x80\x00" * width) * height
    return png(width, height, 16, 0, rows)


def ico_with_png(width: int = HUGE, height: int = HUGE) -> bytes:
    """An icon file whose one entry is a PNG declaring ``width`` x ``height`` (88 bytes)."""
    inner = png_declaring(width, height)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inner), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + inner


def icns_with_png(width: int = HUGE, height: int = HUGE) -> bytes:
    """A macOS icon file holding a PNG declaring ``width`` x ``height``."""
    inner = png_declaring(width, height)
    element = b"ic10" + struct.pack(">I", 8 + len(inner)) + inner
    return b"icns" + struct.pack(">I", 8 + len(element)) + element


def dds_unusual_pixel_format() -> bytes:
    """A DDS header with pixel-format flags no decoder handles (a bump map)."""
    pixel_format = struct.pack("<II4sIIIII", 32, 0x80000, b"\0\0\0\0", 24, 0, 0, 0, 0)
    header = struct.pack("<7I", 124, 0x1007, 64, 64, 0, 0, 0) + b"\0" * 44 + pixel_format
    header += struct.pack("<5I", 0x1000, 0, 0, 0, 0)
    return b"DDS " + header + b"\x7f" * 64 * 64 * 3


def blp() -> bytes:
    """A BLP2 (Blizzard texture) header of an unknown compression."""
    return b"BLP2" + struct.pack("<I4B2I", 3, 1, 8, 0, 0, 512, 512) + b"\0" * 64 * 4 + b"\0" * 1024


def truncated_avif() -> bytes:
    data = image_bytes(Image.new("RGB", (64, 64), (200, 10, 10)), "AVIF")
    return data[: len(data) * 2 // 3]


def spider() -> bytes:
    return image_bytes(Image.new("F", (32, 32), 1.0), "SPIDER")


def gif_cut_in_second_frame() -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    frames[1].putpixel((5, 5), (1, 2, 3))
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    data = buffer.getvalue()
    second = data.index(b"\x21\xf9\x04", data.index(b"\x21\xf9\x04") + 1)
    return data[: second + 1]  # cut just after the second frame's first byte


def webp_declaring(width: int = 16383, height: int = 16383) -> bytes:
    """A lossless WebP whose VP8L header claims ``width`` x ``height`` pixels."""
    data = bytearray(image_bytes(Image.new("RGB", (16, 16)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L"
    (bits,) = struct.unpack_from("<I", data, 21)
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    struct.pack_into("<I", data, 21, bits)
    return bytes(data)


def jpeg_with_scans(photo: Image.Image, scans: int, stray: bytes = b"") -> bytes:
    """A progressive JPEG of ``photo`` whose smallest scan is repeated until it has ``scans``
    (a few hundred bytes each: thousands fit in a small upload), each copy after ``stray``
    bytes (which libjpeg skips with a warning)."""
    data = image_bytes(photo, "JPEG", progressive=True, quality=80)
    starts = [m.start() for m in re.finditer(rb"\xff(\xda|\xc4|\xd9)", data)]
    pieces = [data[a:b] for a, b in zip(starts, starts[1:]) if data[a + 1] == 0xDA]
    smallest = min(pieces, key=len)
    return data[:-2] + (stray + smallest) * (scans - len(pieces)) + b"\xff\xd9"


def npy_declaring(
    shape: tuple[int, ...], descr: str = "<f4", body: bytes = b"\0" * 2048, fortran: bool = False
) -> bytes:
    """A version 1 .npy header declaring ``shape`` of ``descr``, followed by ``body``."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


def torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def pt_with_deflated_storage(values: int) -> bytes:
    """A torch.save archive of a ``values``-long float tensor whose storage entry is deflated
    (written in 16 MiB pieces: a 1 GiB storage costs a test only its ~1 MB compressed form)."""
    template = zipfile.ZipFile(io.BytesIO(torch_bytes(torch.zeros(2))))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for item in template.infolist():
            data = template.read(item)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"K\x02", b"J" + struct.pack("<i", values))  # numel, size
            if not item.filename.endswith("data/0"):
                archive.writestr(item, data)
                continue
            entry = zipfile.ZipInfo(item.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w", force_zip64=True) as stream:
                piece = b"\0" * (16 << 20)
                left = values * 4
                while left:
                    stream.write(piece[: min(left, len(piece))])
                    left -= min(left, len(piece))
    return out.getvalue()


def quantized_tensor() -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated
        return torch_bytes(torch.quantize_per_tensor(torch.ones(512), 0.1, 0, torch.qint8))


def json_with_number(digits: int) -> bytes:
    return ("[" + "1" * digits + "," + "0.1," * 510 + "0.1]").encode()


CRAFTED_IMAGES = {
    "ico holding a png of 2^31-1 squared": (ico_with_png, 415, "unsupported_image"),
    "icns holding a png of 2^31-1 squared": (icns_with_png, 415, "unsupported_image"),
    "dds with unusual pixel-format flags": (dds_unusual_pixel_format, 415, "unsupported_image"),
    "blp": (blp, 415, "unsupported_image"),
    "truncated avif": (truncated_avif, 415, "unsupported_image"),
    "spider": (spider, 415, "unsupported_image"),
    "gif cut inside its second frame": (gif_cut_in_second_frame, 415, "unsupported_image"),
    "webp declaring 16383x16383": (webp_declaring, 413, "image_too_large"),
}

CRAFTED_REFERENCES = {
    "json number of 400 digits": lambda: json_with_number(400),
    "json number of 5,000 digits": lambda: json_with_number(5000),
    "npy declaring a shape of 2^40": lambda: npy_declaring((2**40,)),
    "npy declaring 2^20 x 512": lambda: npy_declaring((2**20, 512)),
    "npy of a structured dtype": lambda: npy_declaring((512,), "[('a', '<f4')]"),
    "npy of complex values": lambda: npy_declaring((512,), "<c8"),
    "npy of version 3": lambda: npy_declaring((512,)).replace(b"\x01\x00", b"\x03\x00", 1),
    "pt of a sparse tensor": lambda: torch_bytes(torch.ones(512).to_sparse()),
    "pt of a meta tensor": lambda: torch_bytes(torch.ones(512, device="meta")),
    "pt of a quantized tensor": quantized_tensor,
    "pt of a 2^40 view of one value": lambda: torch_bytes(torch.ones(1).expand(2**40)),
    "pt of an int tensor": lambda: torch_bytes(torch.ones(512, dtype=torch.int64)),
    "pt of two tensors": lambda: torch_bytes([torch.ones(512), torch.ones(512)]),
    "pt with a deflated storage": lambda: pt_with_deflated_storage(512),
    "reference over 64 KiB": lambda: b"[" + b" " * 70_000 + b"0.1]",
}
