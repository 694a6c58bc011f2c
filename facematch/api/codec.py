"""Reference embeddings in and out: JSON, NumPy ``.npy`` and PyTorch ``.pt``, never a pickle.

``parse_embedding`` accepts what ``/embeddings`` produces, unchanged: a JSON array of floats, the
JSON object ``/embeddings`` returns (its ``embedding`` key), a ``.npy`` file (``allow_pickle``
off) or a tensor saved with ``torch.save`` (loaded with ``weights_only=True``). The format is
recognised from the content, not the file name. The structure is checked before anything is
allocated or loaded: the size of the upload, the JSON's depth and number literals
(``bounded_json``), the ``.npy`` header
(shape and dtype), the ``.pt`` archive (its entries' names, count, sizes and compression, and
the globals its pickle names, read without unpickling). Every failure is ``InvalidEmbedding``.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from facematch import bounded_json
from facematch.errors import InvalidEmbedding, InvalidParameter

if TYPE_CHECKING:  # PyTorch is imported only to read or write a .pt embedding
    import torch

EMBEDDING_DIM = 512
FORMATS = ("json", "npy", "pt")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
#: The largest reference accepted: /embeddings' JSON is about 12 KB, its .npy and .pt under 4 KB.
MAX_REFERENCE_BYTES = 64 * 1024
_JSON_REFERENCE = "the reference (neither a .npy file nor a .pt tensor, so read as JSON)"
_SHAPES = ((EMBEDDING_DIM,), (1, EMBEDDING_DIM))
# What a torch.save'd float tensor's archive holds, under one top folder; at most one storage.
_PT_ENTRY = re.compile(
    r"[^/]+/(data\.pkl|byteorder|version|\.format_version|\.storage_alignment"
    r"|\.data/serialization_id|\.data/version|data/0)"
)
_PT_ENTRY_BYTES = 8 * 1024  # a float64 storage of 512 values is 4 KiB
_PT_GLOBALS = frozenset(
    {
        "torch._utils _rebuild_tensor_v2",
        "collections OrderedDict",
        "torch FloatStorage",
        "torch DoubleStorage",
        "torch HalfStorage",
        "torch BFloat16Storage",
    }
)
# Strings its pickle may hold: the persistent id's "storage", key "0" and location (where it was
# saved: CPU or CUDA; map_location moves it), and the parts of the globals above.
_PT_STRINGS = re.compile(
    r"storage|0|cpu|cuda(:\d+)?|"
    + "|".join(re.escape(part) for name in _PT_GLOBALS for part in name.split())
)


def parse_embedding(data: bytes, device: torch.device | str = "cpu") -> np.ndarray:
    """Return the float32 vector of shape (512,) held in ``data``; ``InvalidEmbedding`` if not."""
    if not data or not data.strip():
        raise InvalidEmbedding("the reference embedding is empty")
    if len(data) > MAX_REFERENCE_BYTES:
        raise InvalidEmbedding(
            f"the reference is {len(data)} bytes; a reference embedding is at most "
            f"{MAX_REFERENCE_BYTES // 1024} KiB"
        )
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
    if array.shape not in _SHAPES:
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
        import torch

        torch.save(torch.from_numpy(vector.copy()), buffer)
    else:
        raise ValueError(f"unknown embedding format {fmt!r}")
    return buffer.getvalue()


def _load_json(data: bytes) -> Any:
    """The JSON reference's values, parsed within bounds (``bounded_json``: its size, depth and
    number literals checked first), each failure an ``InvalidEmbedding``."""
    try:
        value = bounded_json.loads(data, what=_JSON_REFERENCE, max_bytes=MAX_REFERENCE_BYTES)
    except InvalidParameter as error:
        raise InvalidEmbedding(error.message) from None
    if isinstance(value, dict):
        value = value.get("embedding")
        if value is None:
            raise InvalidEmbedding("the JSON reference object has no 'embedding' key")
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise InvalidEmbedding("the reference embedding must be a JSON array of numbers")
    return value


def _load_npy(data: bytes) -> np.ndarray:
    """Check the .npy header (version, shape, dtype) before ``np.load`` allocates anything."""
    header = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(header)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(header)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(header)
        else:
            raise ValueError(f"version {version}")
    except Exception:  # numpy's header parser raises tokenize, syntax and value errors
        raise InvalidEmbedding("the .npy reference has no valid version 1 or 2 header") from None
    if shape not in _SHAPES:
        raise InvalidEmbedding(
            f"the .npy reference has shape {list(shape)}; expected [{EMBEDDING_DIM}]"
        )
    if dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None:
        raise InvalidEmbedding(f"the .npy reference holds {dtype}; expected floats")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InvalidEmbedding(
            "the .npy reference could not be read (object arrays and pickles are refused)"
        ) from None


def _load_pt(data: bytes, device: torch.device | str) -> np.ndarray:
    """Check the archive and its pickle's globals, load with ``weights_only=True``, then check
    the tensor's kind and shape before it is converted (a strided view may claim any shape).
    PyTorch is imported only for an archive that passed the checks: it stays in the worker
    (hundreds of MiB), so a refused upload must not load it."""
    _check_pt_archive(data)
    import torch

    try:
        value = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception:  # torch raises many types for hostile or broken archives
        raise InvalidEmbedding(
            "the .pt reference could not be loaded as a plain tensor (pickled objects are refused)"
        ) from None
    if not isinstance(value, torch.Tensor):
        raise InvalidEmbedding("the .pt reference must hold a single tensor")
    if value.layout != torch.strided or value.is_quantized or value.is_meta:
        raise InvalidEmbedding("the .pt reference must hold a dense tensor with its values")
    if not value.is_floating_point():
        raise InvalidEmbedding(f"the .pt reference holds {value.dtype}; expected floats")
    if tuple(value.shape) not in _SHAPES:
        raise InvalidEmbedding(
            f"the reference embedding has shape {list(value.shape)}; expected [{EMBEDDING_DIM}]"
        )
    return value.detach().to("cpu", torch.float32).numpy()


def _check_pt_archive(data: bytes) -> None:
    """Refuse an archive that ``torch.save`` of one float tensor would not write: other entry
    names, more than one storage, a compressed or oversized entry, or a pickle naming any global
    other than a tensor's and a float storage's, or a storage on a device other than CPU/CUDA."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
        names = {info.filename.split("/", 1)[0] for info in entries}
        if len(entries) > 8 or len(names) != 1:
            raise ValueError("entries")
        for info in entries:
            if not _PT_ENTRY.fullmatch(info.filename):
                raise ValueError(info.filename)
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > _PT_ENTRY_BYTES:
                raise ValueError(info.filename)
        pickle = archive.read(f"{names.pop()}/data.pkl")
        strings, found = [], set()
        for opcode, argument, _ in pickletools.genops(pickle):
            if opcode.name == "GLOBAL":
                found.add(argument)
            elif opcode.name == "STACK_GLOBAL":
                found.add(" ".join(strings[-2:]))
            elif isinstance(argument, str):
                strings.append(argument)
    except (ValueError, KeyError, zipfile.BadZipFile, EOFError, RuntimeError):
        raise InvalidEmbedding(
            "the .pt reference is not an archive torch.save writes for one float tensor "
            "(uncompressed, one storage)"
        ) from None
    if not found <= _PT_GLOBALS or not all(_PT_STRINGS.fullmatch(s) for s in strings):
        raise InvalidEmbedding(
            "the .pt reference must hold one dense float tensor "
            "(sparse, quantized, meta and other objects are refused)"
        )
