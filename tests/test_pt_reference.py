""".pt references without PyTorch: what the codec writes loads in torch, what torch.save writes
is read to the same values, hostile or odd tensors are refused, and serving never imports torch.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from deployment_utils.lfw import lfw_dir
from facematch.api.codec import encode_embedding, parse_embedding
from facematch.errors import InvalidEmbedding
from tests import crafted_files
from tests.conftest import REPO
from tests.crafted_files import torch_bytes

# Two LFW photos of different people (as tests/test_engine_options.py uses).
PHOTOS = ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0001.jpg")
VECTOR = np.random.default_rng(24).standard_normal(512).astype(np.float32)


@pytest.mark.parametrize("mmap", [False, True])
def test_pt_written_without_torch_loads_in_torch_to_the_same_tensor(tmp_path, mmap):
    path = tmp_path / "reference.pt"
    path.write_bytes(encode_embedding(VECTOR, "pt"))
    tensor = torch.load(path, weights_only=True, mmap=mmap)
    assert tensor.dtype == torch.float32 and tensor.shape == (512,)
    assert np.array_equal(tensor.numpy(), VECTOR)


def test_pt_written_without_torch_holds_torch_saves_pickle_and_entries():
    ours = zipfile.ZipFile(io.BytesIO(encode_embedding(VECTOR, "pt")))
    torchs = zipfile.ZipFile(io.BytesIO(torch_bytes(torch.from_numpy(VECTOR))))
    assert ours.read("archive/data.pkl") == torchs.read("archive/data.pkl")
    assert set(ours.namelist()) == set(torchs.namelist()) - {"archive/.data/serialization_id"}


def _rewritten(saved: bytes, byteorder: bytes | None) -> bytes:
    """``saved`` with its byteorder entry set to ``byteorder`` (None: left out) and its storage
    written in that order."""
    source = zipfile.ZipFile(io.BytesIO(saved))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data/0") and byteorder == b"big":
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            if not item.filename.endswith("byteorder"):
                target.writestr(item, data)
            elif byteorder is not None:
                target.writestr(item, byteorder)
    return out.getvalue()


@pytest.mark.parametrize("byteorder", [b"big", None])
def test_pt_storage_is_read_in_the_archives_byte_order_little_when_unstated(byteorder):
    saved = _rewritten(torch_bytes(torch.from_numpy(VECTOR)), byteorder)
    assert np.array_equal(parse_embedding(saved), VECTOR)


def test_pt_written_without_torch_is_read_back_unchanged():
    assert np.array_equal(parse_embedding(encode_embedding(VECTOR, "pt")), VECTOR)


@pytest.mark.parametrize("shape", [(512,), (1, 512)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bfloat16])
def test_torch_saved_float_tensor_is_read_to_its_float32_values(dtype, shape):
    tensor = torch.from_numpy(VECTOR).reshape(shape).to(dtype)
    expected = tensor.to(torch.float32).numpy().reshape(512)
    assert np.array_equal(parse_embedding(torch_bytes(tensor)), expected)


def test_pt_tensor_at_an_offset_in_its_storage_is_read_from_that_offset():
    storage = torch.arange(1024, dtype=torch.float32) + 1
    assert np.array_equal(parse_embedding(torch_bytes(storage[512:])), storage[512:].numpy())


def _offset_past_the_end() -> bytes:
    """torch.save of 512 values whose pickle claims the tensor starts at element 1."""
    saved = torch_bytes(torch.ones(512))
    assert saved.count(b"QK\x00") == 1
    return saved.replace(b"QK\x00", b"QK\x01")


REFUSED = {
    "strided view": lambda: torch_bytes(torch.ones(1024)[::2]),
    "wrong shape": lambda: torch_bytes(torch.ones(2, 256)),
    "offset past the end": _offset_past_the_end,
    "int tensor": lambda: torch_bytes(torch.ones(512, dtype=torch.int32)),
    "complex tensor": lambda: torch_bytes(torch.ones(512, dtype=torch.complex64)),
    "second storage": lambda: torch_bytes([torch.ones(512), torch.ones(512)]),
    "tensor in a dict": lambda: torch_bytes({"embedding": torch.ones(512)}),
    "unknown byte order": lambda: _rewritten(torch_bytes(torch.ones(512)), b"middle"),
    **crafted_files.CRAFTED_REFERENCES,
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_pt_reference_that_is_not_one_contiguous_float_tensor_is_refused(name):
    with pytest.raises(InvalidEmbedding):
        parse_embedding(REFUSED[name]())


def test_serving_pt_references_does_not_import_pytorch():
    """A fresh interpreter (the default ONNX engine) writes a .pt through /embeddings and matches
    it through /cached_match; torch must still be absent from its modules."""
    script = (
        "import sys, io\n"
        "from server import create_app\n"
        "client = create_app({'mqtt_host': ''}).test_client()\n"
        "a, b = (open(p, 'rb').read() for p in sys.argv[1:3])\n"
        "r = client.post('/embeddings', data={'photo': (io.BytesIO(a), 'a.jpg'), 'format': 'pt'})\n"
        "assert r.status_code == 200, r.get_data()\n"
        "m = client.post('/cached_match', data={'reference': (io.BytesIO(r.get_data()), 'r.pt'),"
        " 'sample': (io.BytesIO(b), 'b.jpg')})\n"
        "assert m.status_code == 200, m.get_json()\n"
        "print('torch' in sys.modules)\n"
    )
    images = [str(lfw_dir() / "images" / name) for name in PHOTOS]
    result = subprocess.run(
        [sys.executable, "-c", script, *images],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]
