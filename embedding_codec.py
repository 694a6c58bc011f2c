"""Reference embeddings in and out: JSON, NumPy ``.npy`` and PyTorch ``.pt``, never a pickle.

``parse_embedding`` accepts what ``/embeddings`` produces, unchanged: a JSON array of floats, the
JSON object ``/embeddings`` returns (its ``embedding`` key), a ``.npy`` file (``allow_pickle``
off) or a tensor saved with ``torch.save`` (loaded with ``weights_only=True``). The format is
recognised from the content, not the file name.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import torch

from errors import InvalidEmbedding

EMBEDDING_DIM = 512
FORMATS = ("json", "npy", "pt")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def parse_embedding(data: bytes, device: torch.device | str = "cpu") -> np.ndarray:
    """Return the float32 vector of shape (512,) held in ``data``; ``InvalidEmbedding`` if not."""
    if not data or not data.strip():
        raise InvalidEmbedding("the reference embedding is empty")
    if data.startswith(_NPY_MAGIC):
        values = _load_npy(data)
    elif data.startswith(_ZIP_MAGIC):
        values = _load_pt(data, device)
    else:
        values = _load_json(data)
    return validate_embedding(values)


def validate_embedding(values: Any) -> np.ndarray:
    """Check shape (512,) or (1, 512), a real numeric dtype and finite values; return (512,)."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise InvalidEmbedding("the reference embedding is not a numeric array") from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise InvalidEmbedding("the reference embedding must hold numbers only")
    if array.shape not in ((EMBEDDING_DIM,), (1, EMBEDDING_DIM)):
        raise InvalidEmbedding(
            f"the reference embedding has shape {list(array.shape)}; expected [{EMBEDDING_DIM}]"
        )
    array = array.reshape(EMBEDDING_DIM).astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise InvalidEmbedding("the reference embedding holds NaN or infinite values")
    if not np.any(array):
        raise InvalidEmbedding("the reference embedding is all zeros")
    return array


def encode_embedding(embedding: np.ndarray, fmt: str, extra: dict | None = None) -> bytes:
    """Serialise ``embedding`` as ``fmt`` (json, npy or pt) so ``parse_embedding`` reads it back.

    JSON is an object with the vector under ``embedding`` plus the ``extra`` keys (e.g. model).
    """
    vector = np.asarray(embedding, dtype=np.float32).reshape(EMBEDDING_DIM)
    if fmt == "json":
        body = {"embedding": [float(v) for v in vector], **(extra or {})}
        return json.dumps(body).encode()
    buffer = io.BytesIO()
    if fmt == "npy":
        np.save(buffer, vector, allow_pickle=False)
    elif fmt == "pt":
        torch.save(torch.from_numpy(vector.copy()), buffer)
    else:
        raise ValueError(f"unknown embedding format {fmt!r}")
    return buffer.getvalue()


def _load_json(data: bytes) -> Any:
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidEmbedding(
            "the reference is neither a JSON array of numbers, a .npy file nor a .pt tensor"
        ) from None
    if isinstance(value, dict):
        value = value.get("embedding")
        if value is None:
            raise InvalidEmbedding("the JSON reference object has no 'embedding' key")
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise InvalidEmbedding("the reference embedding must be a JSON array of numbers")
    if not all(math.isfinite(v) for v in value):
        raise InvalidEmbedding("the reference embedding holds NaN or infinite values")
    return value


def _reject_constant(name: str) -> float:
    raise InvalidEmbedding("the reference embedding holds NaN or infinite values")


def _load_npy(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InvalidEmbedding(
            "the .npy reference could not be read (object arrays and pickles are refused)"
        ) from None


def _load_pt(data: bytes, device: torch.device | str) -> np.ndarray:
    try:
        value = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception:  # torch raises many types for hostile or broken archives
        raise InvalidEmbedding(
            "the .pt reference could not be loaded as a plain tensor (pickled objects are refused)"
        ) from None
    if not isinstance(value, torch.Tensor):
        raise InvalidEmbedding("the .pt reference must hold a single tensor")
    if value.is_complex():
        raise InvalidEmbedding("the reference embedding must hold real numbers")
    return value.detach().to("cpu", torch.float32).numpy()
