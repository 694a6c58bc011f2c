"""Reference embeddings in and out: JSON, NumPy ``.npy`` and PyTorch ``.pt``, never a pickle.

``parse_embedding`` accepts what ``/embeddings`` produces, unchanged: a JSON array of floats, the
JSON object ``/embeddings`` returns (its ``embedding`` key), a ``.npy`` file (``allow_pickle``
off) or one float tensor saved with ``torch.save``. The format is recognised from the content,
not the file name. The structure is checked before anything is allocated or loaded: the size of
the upload, the JSON's depth and number literals (``bounded_json``), the ``.npy`` header (shape
and dtype), the ``.pt`` archive (its entries' names, count, sizes and compression, and what its
pickle states, read opcode by opcode without unpickling: a float storage, the tensor's offset,
size and stride). A ``.pt`` is read and written with NumPy and ``zipfile``, never PyTorch: an
import would stay in the worker (hundreds of MiB). Every failure is ``InvalidEmbedding``.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from typing import Any

import numpy as np

from facematch import bounded_json
from facematch.errors import InvalidEmbedding, InvalidParameter

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
# The float storages a tensor may be rebuilt from, as NumPy type codes (bfloat16: its raw bits).
_PT_STORAGES = {
    "torch FloatStorage": "f4",
    "torch HalfStorage": "f2",
    "torch DoubleStorage": "f8",
    "torch BFloat16Storage": "u2",
}
# Where the storage was saved: CPU or CUDA (its bytes are read on the CPU either way).
_PT_LOCATION = re.compile(r"cpu|cuda(:\d+)?")
_PT_REBUILD = "torch._utils _rebuild_tensor_v2"
# The opcodes a torch.save'd tensor's pickle uses (any protocol); any other one is refused.
_PT_OPCODES = frozenset(
    [
        "PROTO",
        "FRAME",
        "GLOBAL",
        "STACK_GLOBAL",
        "MARK",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG1",
        "EMPTY_TUPLE",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "NEWFALSE",
        "NEWTRUE",
        "BINPERSID",
        "REDUCE",
        "BINPUT",
        "LONG_BINPUT",
        "MEMOIZE",
        "BINGET",
        "LONG_BINGET",
        "STOP",
    ]
)
# What encode_embedding writes: torch.save's entries for a (512,) float32 tensor, its pickle
# byte for byte (torch 2.x), each entry's data aligned to 64 bytes as torch aligns it (for mmap).
_PT_PICKLE = (
    b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00((X\x07\x00\x00\x00storageq\x01ctorch\n"
    b"FloatStorage\nq\x02X\x01\x00\x00\x000q\x03X\x03\x00\x00\x00cpuq\x04M\x00\x02tq\x05QK\x00"
    b"M\x00\x02\x85q\x06K\x01\x85q\x07\x89ccollections\nOrderedDict\nq\x08)Rq\ttq\nRq\x0b."
)
_PT_ALIGNMENT = 64
_TUPLE_SIZE = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


class _Global(str):
    """A global the pickle names ("module name"), never imported."""


class _Call(tuple):
    """What REDUCE would call: (callable, arguments), never called."""


class _Storage(tuple):
    """A persistent id: ("storage", storage type, key, location, element count)."""


def parse_embedding(data: bytes) -> np.ndarray:
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
        values = _load_pt(data)
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
        _write_pt(buffer, vector)
    else:
        raise ValueError(f"unknown embedding format {fmt!r}")
    return buffer.getvalue()


def _write_pt(buffer: io.BytesIO, vector: np.ndarray) -> None:
    """Write what ``torch.save`` writes for ``vector`` as a (512,) float32 tensor, without
    PyTorch: its entries, the pickle from ``_PT_PICKLE`` and each entry's data 64-byte aligned
    (a padding extra field in the local header, as torch writes)."""
    entries = {
        "data.pkl": _PT_PICKLE,
        ".format_version": b"1",
        ".storage_alignment": str(_PT_ALIGNMENT).encode(),
        "byteorder": b"little",
        "data/0": vector.astype("<f4").tobytes(),
        "version": b"3\n",
    }
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in entries.items():
            info = zipfile.ZipInfo(f"archive/{name}")
            start = buffer.tell() + 30 + len(info.filename) + 4  # local header, padding's header
            info.extra = _padding(-start % _PT_ALIGNMENT)
            archive.writestr(info, content)


def _padding(size: int) -> bytes:
    """A zip extra field (id "FB", as torch writes) of ``size`` bytes after its 4-byte header."""
    return b"FB" + size.to_bytes(2, "little") + b"Z" * size


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


def _load_pt(data: bytes) -> np.ndarray:
    """The float32 values of the one float tensor the archive holds, read with NumPy from its
    storage entry after ``_check_pt_archive``: nothing is unpickled and PyTorch is not imported
    (it would stay in the worker, hundreds of MiB)."""
    dtype, offset, size, raw = _check_pt_archive(data)
    values = np.frombuffer(raw, dtype, count=EMBEDDING_DIM, offset=offset * dtype.itemsize)
    if dtype.kind == "u":  # bfloat16: the high half of a float32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32).reshape(size)


def _check_pt_archive(data: bytes) -> tuple[np.dtype, int, tuple, bytes]:
    """Refuse an archive that ``torch.save`` of one float tensor would not write: other entry
    names, more than one storage, a compressed or oversized entry, a pickle other than
    ``_rebuild_tensor_v2`` of one float storage saved on CPU/CUDA, or a tensor that is not a
    contiguous (512,) or (1, 512) inside its storage. Returns the storage's dtype (in the
    archive's byte order), the tensor's offset and size, and the storage's bytes."""
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
        top = names.pop()
        order = {b"little": "<", b"big": ">"}[
            archive.read(f"{top}/byteorder")
            if f"{top}/byteorder" in archive.namelist()
            else b"little"
        ]
        tensor = _read_pt_pickle(archive.read(f"{top}/data.pkl"))
        raw = archive.read(f"{top}/data/0")
    except (ValueError, KeyError, IndexError, zipfile.BadZipFile, EOFError, RuntimeError):
        raise InvalidEmbedding(
            "the .pt reference is not an archive torch.save writes for one float tensor "
            "(uncompressed, one storage)"
        ) from None
    if tensor is None:
        raise InvalidEmbedding(
            "the .pt reference must hold one dense float tensor "
            "(sparse, quantized, meta and other objects are refused)"
        )
    dtype_code, numel, offset, size, stride = tensor
    if size not in _SHAPES:
        raise InvalidEmbedding(
            f"the reference embedding has shape {list(size)}; expected [{EMBEDDING_DIM}]"
        )
    dtype = np.dtype(order + dtype_code)
    contiguous = (EMBEDDING_DIM, 1)[-len(size) :]  # a size-1 dimension's stride is any
    if (
        len(stride) != len(size)
        or any(n != 1 and step != want for n, step, want in zip(size, stride, contiguous))
        or not 0 <= offset <= numel - EMBEDDING_DIM
        or len(raw) != numel * dtype.itemsize
    ):
        raise InvalidEmbedding("the .pt reference must hold a contiguous tensor in its storage")
    return dtype, offset, size, raw


def _read_pt_pickle(pickle: bytes) -> tuple[str, int, int, tuple, tuple] | None:
    """Walk the pickle's opcodes (``pickletools.genops``, never executed) on a stack of plain
    values, then match what ``torch.save`` of one float tensor states: ``_rebuild_tensor_v2(
    storage, offset, size, stride, requires_grad, OrderedDict())`` over one float storage.
    Returns (storage type code, element count, offset, size, stride), or None for anything
    else; a malformed pickle raises ``ValueError``."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    for opcode, argument, _ in pickletools.genops(pickle):
        name = opcode.name
        if name not in _PT_OPCODES:
            return None
        if name == "GLOBAL":
            stack.append(_Global(argument))
        elif name == "STACK_GLOBAL":
            module, qualname = stack.pop(-2), stack.pop()
            if not (isinstance(module, str) and isinstance(qualname, str)):
                raise ValueError("STACK_GLOBAL")
            stack.append(_Global(f"{module} {qualname}"))
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("TUPLE", "EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
            start = marks.pop() if name == "TUPLE" else len(stack) - _TUPLE_SIZE[name]
            if not 0 <= start <= len(stack):
                raise ValueError("stack underflow")
            items = tuple(stack[start:])
            del stack[start:]
            stack.append(items)
        elif name in ("NEWFALSE", "NEWTRUE"):
            stack.append(name == "NEWTRUE")
        elif name == "BINPERSID":
            persistent_id = stack.pop()
            if not isinstance(persistent_id, tuple):
                raise ValueError("persistent id")
            stack.append(_Storage(persistent_id))
        elif name == "REDUCE":
            arguments = stack.pop()
            stack.append(_Call((stack.pop(), arguments)))
        elif name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[argument if name != "MEMOIZE" else len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[argument])
        elif name not in ("PROTO", "FRAME", "STOP"):  # a string or an integer
            stack.append(argument)
    if len(stack) != 1 or marks:
        raise ValueError("not one value")
    return _match_tensor(stack[0])


def _match_tensor(value: Any) -> tuple[str, int, int, tuple, tuple] | None:
    """(storage type code, element count, offset, size, stride) if ``value`` is what the pickle
    of one float tensor builds, else None."""
    if not (_is_call(value, _PT_REBUILD) and isinstance(value[1], tuple) and len(value[1]) == 6):
        return None
    storage, offset, size, stride, requires_grad, hooks = value[1]
    if not (
        isinstance(storage, _Storage)
        and len(storage) == 5
        and _is_call(hooks, "collections OrderedDict")
        and hooks[1] == ()
        and isinstance(requires_grad, bool)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
    ):
        return None
    kind, storage_type, key, location, numel = storage
    if not (
        kind == "storage"
        and isinstance(storage_type, _Global)
        and storage_type in _PT_STORAGES
        and key == "0"
        and isinstance(location, str)
        and _PT_LOCATION.fullmatch(location)
        and all(type(n) is int for n in (numel, offset, *size, *stride))
    ):
        return None
    return _PT_STORAGES[storage_type], numel, offset, size, stride


def _is_call(value: Any, name: str) -> bool:
    """Whether ``value`` is a REDUCE of the global ``name`` (not a string that reads the same)."""
    return isinstance(value, _Call) and isinstance(value[0], _Global) and value[0] == name
