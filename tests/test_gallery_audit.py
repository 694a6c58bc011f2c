"""The gallery audit trail through the routes (the Flask test client, LFW photos), on SQLite
and PostgreSQL: every write and decision is an event with the acting key's id, in order;
``GET /galleries/<g>/audit`` pages them and refuses a bad cursor or page size. The store's
side (transactions, retention, the gallery tool) is in test_gallery_store.py and
test_gallery_tool.py."""

from __future__ import annotations

import io
import re
import sqlite3

import flask
import psycopg
import pytest

from facematch.api.app import create_app
from tests.support import DIFFERENT, SAME, assert_error

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(params=["sqlite", "postgresql"])
def audited(request, settings, engine, tmp_path):
    """A client of an app on a fresh gallery database of each backend; a request's
    ``X-Key-Id`` header stands in for the API-key check's ``g.key_id``."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gallery.db'}"
    else:
        url = request.getfixturevalue("postgres")
    app = create_app(settings.replace(gallery_url=url), engine=engine)

    @app.before_request
    def as_key() -> None:
        if "X-Key-Id" in flask.request.headers:
            flask.g.key_id = flask.request.headers["X-Key-Id"]

    client = app.test_client()
    client.url = url
    yield client
    app.extensions["facematch_gallery"].store.close()


def fail_audit_inserts(url: str) -> None:
    """Inject a failure into every insert of an audit event (a trigger, as in
    test_gallery_store.py)."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            connection.execute(
                "CREATE TRIGGER injected BEFORE INSERT ON audit "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        connection.close()
        return
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "CREATE FUNCTION injected() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
        )
        connection.execute(
            "CREATE TRIGGER injected BEFORE INSERT ON audit "
            "FOR EACH ROW EXECUTE FUNCTION injected()"
        )


def post(client, url: str, key: str, photo_field: str, photo: bytes):
    data = {photo_field: (io.BytesIO(photo), "p.jpg")}
    return client.post(url, data=data, headers={"X-Key-Id": key})


def test_every_gallery_write_and_decision_is_an_event_in_order_with_its_key(audited, face_bytes):
    client = audited
    enrolled = post(client, "/galleries/g/subjects/aaron/faces", "k1", "photo", face_bytes(SAME[0]))
    post(client, "/galleries/g/subjects/abel/faces", "k1", "photo", face_bytes(DIFFERENT[1]))
    assert client.put("/galleries/g/subjects/aaron", json={"name": "A"}).status_code == 200
    verified = post(
        client, "/galleries/g/subjects/aaron/verify", "k2", "sample", face_bytes(SAME[1])
    )
    identified = post(client, "/galleries/g/identify", "k3", "sample", face_bytes(SAME[1]))
    face = enrolled.json["face"]
    headers = {"X-Key-Id": "k4"}
    assert (
        client.delete(f"/galleries/g/subjects/aaron/faces/{face}", headers=headers).status_code
        == 200
    )
    assert client.delete("/galleries/g/subjects/abel", headers=headers).status_code == 200
    assert client.delete("/galleries/g", headers=headers).status_code == 200

    answer = client.get("/galleries/g/audit")
    assert answer.status_code == 200 and answer.json["next"] is None
    events = answer.json["events"]
    assert all(ISO_UTC.fullmatch(e["at"]) and e["gallery"] == "g" for e in events)
    assert [(e["key"], e["action"], e["subject"], e["face"]) for e in events] == [
        ("k1", "enrol", "aaron", face),
        ("k1", "enrol", "abel", events[1]["face"]),
        ("anonymous", "update", "aaron", None),
        ("k2", "verify", "aaron", None),
        ("k3", "identify", "aaron", None),
        ("k4", "delete_face", "aaron", face),
        ("k4", "delete_subject", "abel", None),
        ("k4", "delete_gallery", None, None),
    ]
    assert events[3]["outcome"] == {"match": True, "distance": verified.json["distance"]}
    nearest = identified.json["candidates"][0]["distance"]
    assert events[4]["outcome"] == {"identified": "aaron", "distance": nearest}
    assert events[6]["outcome"] == {"subjects": 1, "faces": 1}
    assert events[7]["outcome"] == {"subjects": 1, "faces": 0}


def test_the_audit_route_pages_with_after_and_limit(audited):
    client = audited
    for i in range(5):
        client.put(f"/galleries/g/subjects/s{i}", json={"name": str(i)})
    first = client.get("/galleries/g/audit?limit=2").json
    assert [e["subject"] for e in first["events"]] == ["s0", "s1"]
    second = client.get(f"/galleries/g/audit?limit=2&after={first['next']}").json
    assert [e["subject"] for e in second["events"]] == ["s2", "s3"]
    last = client.get(f"/galleries/g/audit?after={second['next']}").json
    assert [e["subject"] for e in last["events"]] == ["s4"] and last["next"] is None
    assert client.get("/galleries/unknown/audit").json == {"events": [], "next": None}


@pytest.mark.parametrize(
    "query", ["after=abc", "after=-1", "after=1e3", "limit=0", "limit=1001", "limit=x"]
)
def test_a_bad_audit_cursor_or_page_size_is_400(audited, query):
    assert_error(audited.get(f"/galleries/g/audit?{query}"), 400, "invalid_parameter")


def test_a_bad_gallery_id_in_the_audit_route_is_400(audited):
    assert_error(audited.get("/galleries/bad%20id/audit"), 400, "invalid_id")


def test_a_decision_or_write_whose_event_cannot_be_stored_is_not_answered(audited, face_bytes):
    client = audited
    post(client, "/galleries/g/subjects/aaron/faces", "k1", "photo", face_bytes(SAME[0]))
    fail_audit_inserts(client.url)
    identified = post(client, "/galleries/g/identify", "k1", "sample", face_bytes(SAME[1]))
    verified = post(
        client, "/galleries/g/subjects/aaron/verify", "k1", "sample", face_bytes(SAME[1])
    )
    deleted = client.delete("/galleries/g/subjects/aaron")
    assert [r.status_code for r in (identified, verified, deleted)] == [500, 500, 500]
    assert "aaron" not in identified.get_data(as_text=True)
    assert client.get("/galleries/g/subjects/aaron").status_code == 200
    assert [e["action"] for e in client.get("/galleries/g/audit").json["events"]] == ["enrol"]
