"""Small helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import socket

from PIL import Image


def image_bytes(image: Image.Image, fmt: str = "JPEG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
