"""Through the app: each fast path reports its check on /health, and a path whose check fails
serves in float32, with the same answers, and says so."""

from __future__ import annotations

import io

import numpy as np
import pytest

from facematch.api.app import create_app
from facematch.engine.backends.onnx_int8_runtime import int8_graph_path, probe_path
from facematch.engine.engine import FaceEngine
from facematch.gallery import search as gallery_search

AARON = [f"Aaron_Peirsol/Aaron_Peirsol_000{i}.jpg" for i in (1, 2)]
SERENA = "Serena_Williams/Serena_Williams_0001.jpg"


def all_zeros(query: np.ndarray, block: np.ndarray) -> np.ndarray:
    """A wrong search kernel: every sum zero."""
    return np.zeros(block.shape[1], np.int32)


@pytest.fixture
def broken_search_kernel():
    """This process's gallery search checked with a wrong kernel; the real one checked after."""
    gallery_search.use_kernel(all_zeros)
    yield
    gallery_search.use_kernel(gallery_search.onnx_scores)


def embedding(client, photo: bytes) -> np.ndarray:
    answer = client.post("/embeddings", data={"photo": (io.BytesIO(photo), "p.jpg")})
    assert answer.status_code == 200, answer.get_json()
    return np.asarray(answer.get_json()["embedding"], np.float32)


def test_health_reports_a_passed_check_for_each_fast_path_on_this_cpu(client, engine):
    kernels = client.get("/health").get_json()["kernels"]
    assert kernels["gallery_search"] == {
        "backend": gallery_search.INT8_BACKEND,
        "check": "passed",
        "max_error": 0.0,
        "tolerance": 0.0,
    }
    embedder = kernels["embedder"]
    assert embedder["backend"] == engine.options.embed_backend == "onnx-int8"  # the default
    assert embedder["check"] == "passed"
    assert 0 < embedder["max_error"] <= embedder["tolerance"] == 0.01


def test_a_float32_embedder_needs_no_check(settings, client):
    engine = FaceEngine.from_settings(settings.replace(embed_backend="onnx"))
    health = create_app(settings, engine=engine).test_client().get("/health").get_json()
    assert health["kernels"]["embedder"] == {
        "backend": "onnx",
        "check": "not needed: float32",
        "max_error": 0.0,
        "tolerance": 0.0,
    }


@pytest.fixture
def disagreeing_probe(settings, tmp_path):
    """A data dir with the built graphs and weights, whose int8 probe expects other vectors (each
    rotated by one component): the int8 embedder then disagrees with its float32 reference, as a
    wrong kernel would."""
    for path in settings.data_path.iterdir():
        (tmp_path / path.name).symlink_to(path)
    probe = probe_path(int8_graph_path(tmp_path, settings.model))
    with np.load(probe, allow_pickle=False) as stored:
        fields = {name: stored[name] for name in stored.files}
    probe.unlink()
    np.savez(probe, **{**fields, "float32": np.roll(fields["float32"], 1, axis=1)})
    return settings.replace(data_dir=str(tmp_path))


def test_an_int8_embedder_failing_its_check_is_replaced_by_float32_and_health_says_so(
    disagreeing_probe, face_bytes, caplog
):
    settings = disagreeing_probe
    with caplog.at_level("ERROR", logger="facematch.engine.kernel_checks"):
        client = create_app(settings).test_client()
    [line] = [r.getMessage() for r in caplog.records if r.name == "facematch.engine.kernel_checks"]
    assert line.startswith("kernel check failed: embedder (onnx-int8)") and "flags:" in line
    checked = client.get("/health").get_json()["kernels"]["embedder"]
    assert (checked["backend"], checked["check"]) == ("onnx", "failed: fell back to float32")
    assert checked["max_error"] > checked["tolerance"]
    float32 = FaceEngine.from_settings(settings.replace(embed_backend="onnx"))
    float32_client = create_app(settings, engine=float32).test_client()
    photo = face_bytes(AARON[0])
    served, expected = embedding(client, photo), embedding(float32_client, photo)
    np.testing.assert_allclose(served, expected, atol=1e-6)


def test_a_search_kernel_failing_its_check_leaves_identify_exact_and_health_says_so(
    settings, engine, face_bytes, tmp_path, broken_search_kernel
):
    app = create_app(settings.replace(gallery_url=f"sqlite:///{tmp_path / 'g.db'}"), engine=engine)
    client = app.test_client()
    checked = client.get("/health").get_json()["kernels"]["gallery_search"]
    assert checked["backend"] == gallery_search.FLOAT_BACKEND
    assert checked["check"] == "failed: fell back to float32" and checked["max_error"] > 0
    for subject, photo in (("aaron", AARON[0]), ("serena", SERENA)):
        answer = client.post(
            f"/galleries/site/subjects/{subject}/faces",
            data={"photo": (io.BytesIO(face_bytes(photo)), "p.jpg")},
        )
        assert answer.status_code == 201, answer.get_json()
    found = client.post(
        "/galleries/site/identify", data={"sample": (io.BytesIO(face_bytes(AARON[1])), "p.jpg")}
    ).get_json()
    assert found["identified"] == "aaron", found
    assert [c["subject"] for c in found["candidates"]][:2] == ["aaron", "serena"]
