"""/embeddings and /cached_match: every reference format round-trips; hostile references fail."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from tests.support import (
    DIFFERENT,
    SAME,
    assert_error,
    cached_match,
    embedding_of,
    files,
    photo_match,
)


def torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["json", "npy", "pt"])
@pytest.mark.parametrize("pair", [SAME, DIFFERENT])
def test_embedding_round_trip_gives_the_photo_match_distance(client, face_bytes, fmt, pair):
    reference, sample = face_bytes(pair[0]), face_bytes(pair[1])
    expected = photo_match(client, reference, sample).json
    stored = embedding_of(client, reference, fmt).get_data()
    body = cached_match(client, stored, sample).json
    assert body["distance"] == pytest.approx(expected["distance"], abs=1e-5)
    assert body["match"] == expected["match"]
    assert body["faces"]["sample"] == expected["faces"]["sample"]
    assert "reference" not in body["faces"]


def test_json_embedding_response_names_model_and_face(client, face_bytes):
    body = embedding_of(client, face_bytes(SAME[0]), "json").json
    assert len(body["embedding"]) == 512
    assert np.linalg.norm(body["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert body["model"] == "casia-webface"
    assert body["faces"]["photo"]["count"] == 1


def test_binary_embedding_response_carries_model_and_faces_in_headers(client, face_bytes):
    response = embedding_of(client, face_bytes(SAME[0]), "npy")
    assert response.headers["X-Facematch-Model"] == "casia-webface"
    assert json.loads(response.headers["X-Facematch-Faces"])["photo"]["count"] == 1
    assert np.load(io.BytesIO(response.get_data())).shape == (512,)


def test_reference_as_a_plain_json_array_form_field(client, face_bytes):
    vector = embedding_of(client, face_bytes(SAME[0]), "json").json["embedding"]
    response = cached_match(client, json.dumps(vector), face_bytes(SAME[1]), as_file=False)
    assert response.status_code == 200
    assert response.json["match"] is True


def test_pt_reference_of_shape_1x512_is_accepted(client, face_bytes):
    vector = embedding_of(client, face_bytes(SAME[0]), "json").json["embedding"]
    reference = torch_bytes(torch.tensor([vector]))
    assert cached_match(client, reference, face_bytes(SAME[1])).json["match"] is True


def test_pt_reference_saved_from_a_cuda_tensor_is_read_on_the_cpu(client, face_bytes):
    vector = embedding_of(client, face_bytes(SAME[0]), "json").json["embedding"]
    reference = _relocate_storage(torch_bytes(torch.tensor(vector)), "cuda:0")
    response = cached_match(client, reference, face_bytes(SAME[1]))
    assert response.status_code == 200, response.json
    assert response.json["match"] is True


def _relocate_storage(saved: bytes, location: str) -> bytes:
    """Rewrite a torch.save archive so its storage claims ``location`` (as a CUDA save would)."""
    source = zipfile.ZipFile(io.BytesIO(saved))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                old, new = b"cpu", location.encode()
                data = data.replace(
                    b"X" + len(old).to_bytes(4, "little") + old,
                    b"X" + len(new).to_bytes(4, "little") + new,
                )
                assert new in data
            target.writestr(item, data)
    return out.getvalue()


class _WritesFile:
    """Unpickling this runs code: it writes ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('owned')",))


def test_torch_saved_object_that_runs_code_when_unpickled_is_refused(client, face_bytes, tmp_path):
    marker = tmp_path / "owned"
    hostile = torch_bytes(_WritesFile(marker))
    torch.load(io.BytesIO(hostile), weights_only=False)  # proof: a plain load runs the code
    assert marker.exists()
    marker.unlink()
    response = cached_match(client, hostile, face_bytes(SAME[1]))
    assert_error(response, 400, "invalid_embedding")
    assert not marker.exists()


def test_npy_with_object_dtype_is_refused(client, face_bytes):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}] * 512, dtype=object), allow_pickle=True)
    response = cached_match(client, buffer.getvalue(), face_bytes(SAME[1]))
    assert_error(response, 400, "invalid_embedding")


@pytest.mark.parametrize(
    "reference",
    [
        json.dumps([0.1] * 511),
        json.dumps([0.1] * 513),
        json.dumps([[0.1] * 512, [0.1] * 512]),
        "[" + ",".join(["0.1"] * 511 + ["NaN"]) + "]",
        "[" + ",".join(["0.1"] * 511 + ["1e999"]) + "]",
        json.dumps(["0.1"] * 512),
        json.dumps([0.0] * 512),
        json.dumps({"vector": [0.1] * 512}),
        "not json at all",
        "",
    ],
)
def test_malformed_reference_embedding_is_400(client, face_bytes, reference):
    response = cached_match(client, reference, face_bytes(SAME[1]), as_file=False)
    assert_error(response, 400, "invalid_embedding")


def test_pt_reference_of_wrong_dimension_is_400(client, face_bytes):
    response = cached_match(client, torch_bytes(torch.ones(128)), face_bytes(SAME[1]))
    assert_error(response, 400, "invalid_embedding")


def test_missing_reference_is_400_missing_field(client, face_bytes):
    response = client.post("/cached_match", data=files(sample=face_bytes(SAME[1])))
    assert_error(response, 400, "missing_field")


def test_unknown_embedding_format_is_400(client, face_bytes):
    response = client.post(
        "/embeddings", data={**files(photo=face_bytes(SAME[0])), "format": "pkl"}
    )
    assert_error(response, 400, "invalid_parameter")
