"""Export and import over HTTP (``GET /galleries/<g>/export``, ``POST /galleries/<g>/import``)
through the test client with LFW photos, on SQLite and PostgreSQL: a gallery goes out and comes
back the same, audited with the acting key; an altered, unsigned, oversized or other-model
export, or a target that holds faces, is refused with nothing written."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from facematch.api.app import create_app
from tests.support import DIFFERENT, KEY_A, KEY_B, SAME, assert_error


@pytest.fixture(params=["sqlite", "postgresql"])
def make_client(request, settings, engine, tmp_path):
    """``make_client(**settings changes)``: a test client on one fresh gallery database of
    each backend (every client of a test shares it)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gallery.db'}"
    else:
        url = request.getfixturevalue("postgres")
    apps = []

    def make(**changes):
        app = create_app(settings.replace(gallery_url=url, **changes), engine=engine)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["facematch_gallery"].store.close()


def enrol(client, face_bytes) -> None:
    for subject, photo in (("aaron", SAME[0]), ("aaron", SAME[1]), ("abel", DIFFERENT[1])):
        data = {"photo": (io.BytesIO(face_bytes(photo)), "p.jpg")}
        assert client.post(f"/galleries/g/subjects/{subject}/faces", data=data).status_code == 201
    client.put("/galleries/g/subjects/abel", json={"name": "Abel", "metadata": {"team": 1}})
    client.put("/galleries/g/subjects/zoe", json={"name": "Zoe"})  # no face


def test_a_gallery_exported_and_imported_over_http_comes_back_the_same_and_audited(
    make_client, face_bytes
):
    client = make_client(signing_keys=KEY_A)
    enrol(client, face_bytes)
    exported = client.get("/galleries/g/export")
    assert exported.status_code == 200 and exported.mimetype == "application/x-ndjson"
    lines = exported.get_data().splitlines()
    assert json.loads(lines[-1])["end"] == {"subjects": 3, "faces": 3}
    assert json.loads(lines[-1])["signature"].startswith("v1.")

    imported = client.post("/galleries/copy/import", data=exported.get_data())
    assert imported.status_code == 201, imported.json
    assert imported.json == {"gallery": "copy", "subjects": 3, "faces": 3}
    for subject in ("aaron", "abel", "zoe"):
        before = client.get(f"/galleries/g/subjects/{subject}").json
        after = client.get(f"/galleries/copy/subjects/{subject}").json
        assert (after["name"], after["metadata"]) == (before["name"], before["metadata"])
        sources = lambda body: [(f["box"], f["image_size"]) for f in body["faces"]]  # noqa: E731
        assert sources(after) == sources(before)
    again = client.get("/galleries/copy/export").get_data().splitlines()
    faces = lambda ls: [f["vector"] for line in ls[1:-1] for f in json.loads(line)["faces"]]  # noqa: E731
    assert faces(again) == faces(lines)

    assert client.get("/galleries/g/audit").json["events"][-1]["action"] == "export"
    trail = client.get("/galleries/copy/audit").json["events"]
    assert {(e["key"], e["action"]) for e in trail[:-1]} == {("anonymous", "import")}
    assert (
        sum(e["outcome"]["faces"] for e in trail if e["action"] == "import" and not e["subject"])
        == 3
    )


def test_an_export_of_an_unknown_gallery_is_404(make_client):
    assert_error(make_client().get("/galleries/nobody/export"), 404, "not_found")


def test_a_bad_export_is_refused_whole_and_nothing_is_written(make_client, face_bytes):
    client = make_client(signing_keys=KEY_A)
    enrol(client, face_bytes)
    good = client.get("/galleries/g/export").get_data()
    lines = good.splitlines(keepends=True)
    record = json.loads(lines[1])
    vector = np.frombuffer(base64.b64decode(record["faces"][0]["vector"]), "<f4")
    record["faces"][0]["vector"] = base64.b64encode((-vector).tobytes()).decode()
    altered = b"".join([lines[0], json.dumps(record).encode() + b"\n", *lines[2:]])
    unsigned = make_client().get("/galleries/g/export").get_data()
    foreign = make_client(signing_keys=KEY_B).get("/galleries/g/export").get_data()
    refusals = [
        (altered, 403, "bad_signature"),
        (unsigned, 400, "unsigned_reference"),
        (foreign, 400, "unsigned_reference"),
        (b"".join(lines[:-2] + lines[-1:]), 400, "invalid_parameter"),  # a subject missing
        (b"".join(lines[:-1]), 400, "invalid_parameter"),  # no last line: stopped midway
        (b"not an export", 400, "invalid_parameter"),
        (b"", 400, "invalid_parameter"),
    ]
    for body, status, code in refusals:
        assert_error(client.post("/galleries/copy/import", data=body), status, code)
    assert_error(client.post("/galleries/g/import", data=good), 400, "invalid_parameter")
    header = {**json.loads(lines[0]), "model": "vggface2"}
    other_model = json.dumps(header).encode() + b"\n" + b"".join(lines[1:])
    unchecked = make_client()  # no signing keys: the signature is not checked
    assert_error(unchecked.post("/galleries/copy/import", data=other_model), 422, "wrong_model")
    small = make_client(signing_keys=KEY_A, max_upload_mb=0.001)
    assert_error(small.post("/galleries/copy/import", data=good), 413, "payload_too_large")
    assert_error(client.get("/galleries/copy/subjects"), 404, "not_found")
    assert client.get("/galleries/copy/audit").json["events"] == []
