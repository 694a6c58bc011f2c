"""The gallery routes in-process (the app factory, the session's engine, a temporary SQLite
file): the 1:N policy, the metrics record of a gallery request, and that the store is opened
lazily and never touched by the 1:1 routes. Routes and errors on both backends through Gunicorn
are in test_gallery_gunicorn.py."""

from __future__ import annotations

import io
import json

import pytest

from facematch.api.app import create_app
from facematch.config import ConfigError, Settings
from facematch.decision.policy import DecisionPolicy
from facematch.errors import GalleryUnavailable, RuleNotAllowed, ThresholdNotAllowed
from facematch.gallery.store import FaceSource
from tests.support import DIFFERENT, SAME, assert_error, files, photo_match

AARON = [f"Aaron_Peirsol/Aaron_Peirsol_000{i}.jpg" for i in (1, 2, 3)]


@pytest.fixture
def gallery_app(settings, engine, tmp_path):
    def make(**changes):
        url = f"sqlite:///{tmp_path / 'gallery.db'}"
        return create_app(settings.replace(gallery_url=url, **changes), engine=engine)

    return make


def post(client, url: str, **named):
    data = {key: (io.BytesIO(value), "p.jpg") if isinstance(value, bytes) else value
            for key, value in named.items()}  # fmt: skip
    return client.post(url, data=data)


# --- the 1:N policy -----------------------------------------------------------------------


def test_the_identify_threshold_is_its_own_setting_and_may_only_be_tightened():
    policy = DecisionPolicy.from_settings(Settings(identify_threshold=0.4))
    assert policy.for_identify({}).threshold == 0.4
    assert policy.for_request({}).threshold == 0.6397  # 1:1 unchanged
    assert policy.for_identify({"threshold": "0.3"}).threshold == 0.3
    with pytest.raises(ThresholdNotAllowed, match="0.4"):
        policy.for_identify({"threshold": "0.41"})
    looser = DecisionPolicy.from_settings(
        Settings(identify_threshold=0.4, max_identify_threshold=0.5)
    )
    assert looser.for_identify({"threshold": "0.5"}).threshold == 0.5


def test_the_identify_threshold_defaults_to_the_measured_one_not_the_one_to_one():
    policy = DecisionPolicy.from_settings(Settings(threshold=0.5))
    assert policy.for_identify({}).threshold == 0.3458
    with pytest.raises(ThresholdNotAllowed, match="0.3458"):
        policy.for_identify({"threshold": "0.36"})
    euclidean = DecisionPolicy.from_settings(Settings(metric="euclidean"))
    assert euclidean.for_identify({"metric": "cosine"}).threshold == pytest.approx(0.3458)


@pytest.mark.parametrize(
    "changes",
    [
        {"identify_threshold": 2.5},
        {"identify_threshold": 0.5, "max_identify_threshold": 0.4},
        {"verify_rules": "nearest,mode"},
        {"verify_rules": ""},
    ],
)
def test_unusable_gallery_policy_settings_are_refused(changes):
    with pytest.raises(ConfigError):
        DecisionPolicy.from_settings(Settings(**changes))


def test_the_verify_rule_is_the_operators_unless_the_request_picks_an_allowed_one():
    policy = DecisionPolicy.from_settings(Settings())
    assert policy.verify_rule({}) == "centroid"
    for rule in ("nearest", "knn"):
        with pytest.raises(RuleNotAllowed):
            policy.verify_rule({"rule": rule})
    chosen = DecisionPolicy.from_settings(Settings(verify_rules="nearest,knn"))
    assert chosen.verify_rule({}) == "nearest" and chosen.verify_rule({"rule": "knn"}) == "knn"
    with pytest.raises(RuleNotAllowed):
        chosen.verify_rule({"rule": "centroid"})


# --- routes in-process --------------------------------------------------------------------


def test_identify_with_all_faces_is_refused_unless_the_operator_allows_it(gallery_app, face_bytes):
    client = gallery_app().test_client()
    assert (
        post(client, "/galleries/g/subjects/a/faces", photo=face_bytes(AARON[0])).status_code == 201
    )
    response = post(
        client, "/galleries/g/identify", sample=face_bytes(AARON[1]), sample_faces="all"
    )
    assert_error(response, 403, "sample_faces_not_allowed")


def test_verify_against_a_subject_without_faces_is_409(gallery_app, face_bytes):
    client = gallery_app().test_client()
    assert client.put("/galleries/g/subjects/empty", json={"name": "E"}).status_code == 200
    response = post(client, "/galleries/g/subjects/empty/verify", sample=face_bytes(AARON[1]))
    assert_error(response, 409, "no_references")


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'{"name": "x", "extra": 1}', b'{"metadata": {"a": "' + b"x" * 5000 + b'"}}'],
)
def test_put_needs_a_json_object_of_name_and_small_metadata(gallery_app, body):
    client = gallery_app().test_client()
    response = client.put("/galleries/g/subjects/s", data=body, content_type="application/json")
    assert_error(response, 400, "invalid_parameter")


def test_an_embedding_claiming_another_model_is_refused(gallery_app, face_bytes):
    client = gallery_app().test_client()
    made = post(client, "/embeddings", photo=face_bytes(AARON[0])).get_json()
    other = {**made, "model": "vggface2"}
    response = post(client, "/galleries/g/subjects/a/faces", embedding=json.dumps(other))
    assert_error(response, 422, "wrong_model")


def test_the_metrics_record_of_identify_has_the_search_and_no_ids(
    gallery_app, face_bytes, last_record
):
    app = gallery_app()
    seen = last_record(app)
    client = app.test_client()
    post(client, "/galleries/site/subjects/aaron/faces", photo=face_bytes(AARON[0]))
    post(client, "/galleries/site/subjects/abel/faces", photo=face_bytes(DIFFERENT[1]))
    body = post(client, "/galleries/site/identify", sample=face_bytes(AARON[2])).get_json()
    record = seen["record"]
    assert record.endpoint == "/galleries/<gallery>/identify"
    assert record.gallery.size == 2 and record.gallery.candidates == 2
    assert record.gallery.best_distance == body["candidates"][0]["distance"]
    assert record.match is True and record.latency.search > 0
    assert "aaron" not in repr(record) and "site" not in repr(record)


# --- the store: opened lazily, never touched by the 1:1 routes ----------------------------


class BrokenStore:
    """A store whose every call fails as a database that is down does, counting the calls."""

    calls = 0

    def __getattr__(self, name):
        def unavailable(*args, **kwargs):
            BrokenStore.calls += 1
            raise GalleryUnavailable("the gallery database is unavailable")

        return unavailable


def test_the_one_to_one_routes_never_touch_the_store(gallery_app, face_bytes):
    app = gallery_app()
    BrokenStore.calls = 0
    app.extensions["facematch_gallery"].store = BrokenStore()
    client = app.test_client()
    reference, sample = face_bytes(SAME[0]), face_bytes(SAME[1])
    assert photo_match(client, reference, sample).status_code == 200
    assert client.post("/embeddings", data=files(photo=reference)).status_code == 200
    assert client.get("/health").status_code == 200
    assert BrokenStore.calls == 0
    unavailable = client.get("/galleries/g/subjects")
    assert_error(unavailable, 503, "gallery_unavailable")
    assert unavailable.headers["Retry-After"] == "5" and BrokenStore.calls == 1
    again = client.get("/galleries/g/subjects")  # within Retry-After: not tried again
    assert_error(again, 503, "gallery_unavailable")
    assert BrokenStore.calls == 1


def test_the_app_starts_without_creating_the_gallery_file(settings, engine, tmp_path):
    path = tmp_path / "sub" / "gallery.db"
    app = create_app(settings.replace(gallery_url=f"sqlite:///{path}"), engine=engine)
    assert app.test_client().get("/health").status_code == 200
    assert not path.exists()
    with pytest.raises(ConfigError):
        create_app(settings.replace(gallery_url="mysql://x"), engine=engine)


def test_an_enrolled_source_is_the_photos_primary_face(gallery_app, face_bytes):
    app = gallery_app()
    client = app.test_client()
    body = post(client, "/galleries/g/subjects/a/faces", photo=face_bytes(AARON[0])).get_json()
    store = app.extensions["facematch_gallery"].store
    (face,) = store.get_subject("g", "a").faces
    assert isinstance(face.source, FaceSource)
    assert [round(v, 1) for v in face.source.box] == body["source"]["box"]
    assert (face.source.image_width, face.source.image_height) == (250, 250)
