"""Bursts (issue 25): /cached_match, a gallery's verify and identify take up to
FACEMATCH_MAX_SAMPLES ``sample`` photos of one person, fuse them (``fusion.fuse``) and say
``samples: {sent, used}``; samples of more than one person (mixed people, a collage whose
primary face is a stranger) are 422 ``inconsistent_samples`` before any decision. All through a
real Gunicorn on a real SQLite gallery."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from facematch.api.app import create_app
from facematch.decision.fusion import fuse
from facematch.decision.scores import cosine_distance, default_threshold
from facematch.observability import message
from tests.support import image_bytes

MAX_SAMPLES = 3
AARON = [f"Aaron_Peirsol/Aaron_Peirsol_000{i}.jpg" for i in (1, 2, 3, 4)]
ABEL = [f"Abel_Pacheco/Abel_Pacheco_000{i}.jpg" for i in (1, 2, 3, 4)]


@pytest.fixture(scope="module")
def server(module_gunicorn, tmp_path_factory):
    path = tmp_path_factory.mktemp("burst") / "gallery.db"
    return module_gunicorn(
        FACEMATCH_GALLERY_URL=f"sqlite:///{path}",
        FACEMATCH_MAX_SAMPLES=str(MAX_SAMPLES),
        FACEMATCH_ALLOW_ALL_FACES="true",
    )


@pytest.fixture(scope="module")
def embedding(server, face_bytes):
    """The service's embedding of an LFW image's primary face (as /embeddings answers it)."""

    def embed(name: str) -> np.ndarray:
        files = {"photo": ("p.jpg", face_bytes(name))}
        response = requests.post(f"{server.url}/embeddings", files=files, timeout=60)
        assert response.status_code == 200, response.text
        return np.array(response.json()["embedding"])

    return embed


@pytest.fixture
def gallery(request, server, face_bytes) -> str:
    """A gallery of this test's own with Aaron's and Abel's first photos enrolled."""
    name = "g-" + request.node.name.split("[")[0][5:60]
    for subject, photo in (("aaron", AARON[0]), ("abel", ABEL[0])):
        url = f"{server.url}/galleries/{name}/subjects/{subject}/faces"
        response = requests.post(url, files={"photo": ("p.jpg", face_bytes(photo))}, timeout=60)
        assert response.status_code == 201, response.text
    return name


def blank() -> bytes:
    return image_bytes(Image.new("RGB", (250, 250), (200, 180, 160)))


def collage(face_bytes, primary: str, small: str) -> bytes:
    """``primary``'s photo large in the middle and ``small``'s photo small in a corner."""
    canvas = Image.new("RGB", (600, 600), (128, 128, 128))
    canvas.paste(Image.open(io.BytesIO(face_bytes(primary))).resize((360, 360)), (120, 120))
    canvas.paste(Image.open(io.BytesIO(face_bytes(small))).resize((120, 120)), (0, 0))
    return image_bytes(canvas)


def burst(photos: list[bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("sample", (f"s{i}.jpg", photo)) for i, photo in enumerate(photos)]


def cached_match(server, reference: np.ndarray, photos: list[bytes], **form):
    data = {"reference": str(reference.tolist()), **form}
    return requests.post(f"{server.url}/cached_match", data=data, files=burst(photos), timeout=60)


def verify(server, gallery: str, subject: str, photos: list[bytes], **form):
    url = f"{server.url}/galleries/{gallery}/subjects/{subject}/verify"
    return requests.post(url, data=form, files=burst(photos), timeout=60)


def identify(server, gallery: str, photos: list[bytes], **form):
    url = f"{server.url}/galleries/{gallery}/identify"
    return requests.post(url, data=form, files=burst(photos), timeout=60)


def audit_actions(server, gallery: str) -> list[str]:
    response = requests.get(f"{server.url}/galleries/{gallery}/audit", timeout=60)
    assert response.status_code == 200, response.text
    return [event["action"] for event in response.json()["events"]]


def assert_error(response: requests.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == code
    return response.json()["error"]["message"]


# --- fusion and the counts ---------------------------------------------------------------------


def test_a_burst_is_decided_on_the_fused_embedding_of_its_samples(server, face_bytes, embedding):
    reference = embedding(AARON[0])
    samples = AARON[1:4]
    response = cached_match(server, reference, [face_bytes(name) for name in samples])
    assert response.status_code == 200, response.text
    body = response.json()
    fused = fuse(np.stack([embedding(name) for name in samples]))
    assert body["distance"] == pytest.approx(cosine_distance(reference, fused), abs=1e-4)
    assert body["match"] is True
    assert body["samples"] == {"sent": 3, "used": 3}
    assert set(body["faces"]) == {"sample", "sample_2", "sample_3"}
    assert all(body["faces"][role]["count"] == 1 for role in body["faces"])


def test_one_sample_answers_as_before_with_one_sent_and_used(server, face_bytes, embedding):
    reference = embedding(AARON[0])
    response = cached_match(server, reference, [face_bytes(AARON[1])])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["distance"] == pytest.approx(
        cosine_distance(reference, embedding(AARON[1])), abs=1e-4
    )
    assert body["samples"] == {"sent": 1, "used": 1}
    assert set(body["faces"]) == {"sample"}
    assert {"match", "distance", "threshold", "metric", "model", "latency_ms"} <= set(body)


def test_a_sample_without_a_face_is_sent_but_not_used(server, face_bytes, embedding):
    reference = embedding(AARON[0])
    photos = [face_bytes(AARON[1]), blank(), face_bytes(AARON[2])]
    body = cached_match(server, reference, photos).json()
    assert body["samples"] == {"sent": 3, "used": 2}
    assert body["faces"]["sample_2"]["count"] == 0
    fused = fuse(np.stack([embedding(AARON[1]), embedding(AARON[2])]))
    assert body["distance"] == pytest.approx(cosine_distance(reference, fused), abs=1e-4)


def test_a_burst_without_any_face_is_422_no_face(server, embedding):
    response = cached_match(server, embedding(AARON[0]), [blank(), blank()])
    assert_error(response, 422, "no_face")


def test_a_burst_of_a_stranger_is_no_match(server, face_bytes, embedding):
    body = cached_match(server, embedding(AARON[0]), [face_bytes(n) for n in ABEL[1:4]]).json()
    assert body["samples"] == {"sent": 3, "used": 3}
    assert body["match"] is False


# --- strangers are never combined ------------------------------------------------------------


@pytest.mark.parametrize("stranger_at", [0, 1])
def test_mixed_people_are_422_inconsistent_samples(server, face_bytes, embedding, stranger_at):
    photos = [face_bytes(AARON[1]), face_bytes(AARON[2])]
    photos.insert(stranger_at, face_bytes(ABEL[1]))
    for reference in (embedding(AARON[0]), embedding(ABEL[0])):
        message = assert_error(cached_match(server, reference, photos), 422, "inconsistent_samples")
        assert "one person" in message


def test_a_collage_whose_primary_face_is_a_stranger_is_422(server, face_bytes, embedding):
    stranger_first = collage(face_bytes, primary=ABEL[1], small=AARON[2])
    photos = [face_bytes(AARON[1]), stranger_first]
    response = cached_match(server, embedding(AARON[0]), photos)
    assert_error(response, 422, "inconsistent_samples")


def test_a_burst_of_two_people_is_refused_at_the_distance_that_separates_them(
    server, face_bytes, embedding
):
    """The check is the verify threshold: Aaron and Abel are farther apart than it."""
    apart = cosine_distance(embedding(AARON[1]), embedding(ABEL[1]))
    assert apart > default_threshold("cosine")
    photos = [face_bytes(AARON[1]), face_bytes(ABEL[1])]
    assert_error(cached_match(server, embedding(AARON[0]), photos), 422, "inconsistent_samples")


def test_gallery_verify_refuses_mixed_people_before_deciding(server, face_bytes, gallery):
    before = audit_actions(server, gallery)
    photos = [face_bytes(AARON[1]), face_bytes(ABEL[1])]
    assert_error(verify(server, gallery, "aaron", photos), 422, "inconsistent_samples")
    assert audit_actions(server, gallery) == before  # no decision was made, none recorded


def test_gallery_identify_refuses_a_collage_before_deciding(server, face_bytes, gallery):
    before = audit_actions(server, gallery)
    photos = [face_bytes(AARON[1]), collage(face_bytes, primary=ABEL[1], small=AARON[2])]
    assert_error(identify(server, gallery, photos), 422, "inconsistent_samples")
    assert audit_actions(server, gallery) == before


# --- the gallery routes ------------------------------------------------------------------------


def test_gallery_verify_and_identify_fuse_a_burst(server, face_bytes, gallery):
    photos = [face_bytes(name) for name in AARON[1:4]]
    verified = verify(server, gallery, "aaron", photos)
    assert verified.status_code == 200, verified.text
    assert verified.json()["match"] is True
    assert verified.json()["samples"] == {"sent": 3, "used": 3}
    identified = identify(server, gallery, photos)
    assert identified.status_code == 200, identified.text
    assert identified.json()["identified"] == "aaron"
    assert identified.json()["samples"] == {"sent": 3, "used": 3}
    assert audit_actions(server, gallery)[-2:] == ["verify", "identify"]


def test_gallery_verify_of_a_stranger_burst_is_no_match(server, face_bytes, gallery):
    response = verify(server, gallery, "aaron", [face_bytes(n) for n in ABEL[1:4]])
    assert response.status_code == 200, response.text
    assert response.json()["match"] is False


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["cached_match", "verify", "identify"])
def test_more_samples_than_the_limit_is_400_before_any_photo_is_read(
    server, face_bytes, embedding, gallery, route
):
    photos = [face_bytes(AARON[1])] * MAX_SAMPLES + [b"not a photo"]
    response = {
        "cached_match": lambda: cached_match(server, embedding(AARON[0]), photos),
        "verify": lambda: verify(server, gallery, "aaron", photos),
        "identify": lambda: identify(server, gallery, photos),
    }[route]()
    message = assert_error(response, 400, "too_many_samples")
    assert str(MAX_SAMPLES) in message


def test_an_oversized_sample_of_a_burst_is_413_naming_it(server, face_bytes, embedding):
    huge = image_bytes(Image.new("RGB", (8000, 6000), (0, 0, 0)), quality=10)  # 48 MP
    response = cached_match(server, embedding(AARON[0]), [face_bytes(AARON[1]), huge])
    assert "sample_2" in assert_error(response, 413, "image_too_large")


def test_all_sample_faces_is_refused_for_a_burst(server, face_bytes, embedding):
    photos = [face_bytes(AARON[1]), face_bytes(AARON[2])]
    response = cached_match(server, embedding(AARON[0]), photos, sample_faces="all")
    assert_error(response, 400, "invalid_parameter")


# --- metrics -----------------------------------------------------------------------------------


def test_a_bursts_metrics_message_is_valid_and_records_its_first_sample(
    settings, engine, face_bytes, last_record
):
    app = create_app(settings, engine=engine)
    seen = last_record(app)
    client = app.test_client()
    reference = client.post("/embeddings", data={"photo": (io.BytesIO(face_bytes(AARON[0])), "p")})
    photos = [(io.BytesIO(face_bytes(name)), f"{i}.jpg") for i, name in enumerate(AARON[1:4])]
    body = client.post(
        "/cached_match", data={"reference": reference.get_data(as_text=True), "sample": photos}
    ).get_json()
    assert body["samples"] == {"sent": 3, "used": 3}
    built = message.build_message(seen["record"], "node")
    message.validate(built)
    assert [face["role"] for face in built["faces"]] == ["sample"]
    assert built["match"] is True and built["distance"] == body["distance"]
