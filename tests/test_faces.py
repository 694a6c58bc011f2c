"""POST /faces: every face found in a photo, primary first, with boxes, landmarks, the primary flag
and (on request) the 160x160 crops the model embeds; no face is an empty answer, not an error."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from facematch.api.app import create_app
from facematch.engine.crops import standardise
from facematch.engine.detection import rank_faces
from tests.support import KEY_A, SAME, assert_error, files, image_bytes

#: An LFW photo in which the detector finds three faces (all with probability about 1.0).
THREE_FACES = "Marion_Barry/Marion_Barry_0001.jpg"


def faces_of(client, photo: bytes, **form):
    return client.post("/faces", data={**files(photo=photo), **form})


def decoded(crop: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(crop, validate=True)))


def test_a_portrait_has_one_primary_face_with_box_landmarks_and_image_size(client, face_bytes):
    response = faces_of(client, face_bytes(SAME[0]))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.json
    assert body["count"] == 1 and body["image_size"] == [250, 250]
    (face,) = body["faces"]
    assert face["primary"] is True and "crop" not in face
    x1, y1, x2, y2 = face["box"]
    assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 250
    assert 0.9 < face["probability"] <= 1
    assert len(face["landmarks"]) == 5
    (lx, ly), (rx, ry), (nx, ny) = face["landmarks"][:3]
    assert lx < nx < rx and all(x1 < x < x2 and y1 < y < y2 for x, y in face["landmarks"])
    assert body["latency_ms"]["detection"] > 0


def test_the_primary_face_is_the_one_the_match_routes_compare(client, face_bytes):
    photo = face_bytes(THREE_FACES)
    listed = faces_of(client, photo).json
    embedded = client.post("/embeddings", data=files(photo=photo)).json
    assert listed["faces"][0]["box"] == embedded["faces"]["photo"]["box"]
    assert listed["count"] == embedded["faces"]["photo"]["count"] == 3


def test_a_group_photo_lists_every_face_in_the_order_of_the_primary_face_rule(
    client, engine, face_bytes
):
    body = faces_of(client, face_bytes(THREE_FACES)).json
    assert body["count"] == 3 == len(body["faces"])
    assert [face["primary"] for face in body["faces"]] == [True, False, False]
    boxes = np.array([face["box"] for face in body["faces"]])
    probs = np.array([face["probability"] for face in body["faces"]])
    width, height = body["image_size"]
    order = rank_faces(boxes, probs, width, height, engine.options.face_selection)
    assert order == [0, 1, 2]
    assert len({tuple(face["box"]) for face in body["faces"]}) == 3


def test_max_faces_keeps_the_best_ranked_faces(client, face_bytes):
    photo = face_bytes(THREE_FACES)
    every = faces_of(client, photo).json["faces"]
    two = faces_of(client, photo, max_faces="2").json
    assert two["count"] == 2 and two["faces"] == every[:2]
    assert faces_of(client, photo, max_faces="100").json["faces"] == every


def test_crops_are_the_160x160_jpegs_the_model_embeds(client, engine, face_bytes):
    photo = face_bytes(THREE_FACES)
    body = faces_of(client, photo, crops="true").json
    crops = [decoded(face["crop"]) for face in body["faces"]]
    assert [(c.format, c.size, c.mode) for c in crops] == [("JPEG", (160, 160), "RGB")] * 3
    found = engine.detect(Image.open(io.BytesIO(photo)).convert("RGB"))
    for crop, face in zip(crops, found.faces):
        original = (face.crop * 128 + 127.5).transpose(1, 2, 0)
        assert np.abs(np.asarray(crop, np.float32) - original).mean() < 4  # JPEG's loss only
    # Embedding the returned primary crop gives the embedding /embeddings returns.
    vector = engine.embed([standardise(np.asarray(crops[0]))]).vectors[0]
    reference = np.asarray(client.post("/embeddings", data=files(photo=photo)).json["embedding"])
    assert float(np.dot(vector, reference)) > 0.98


def test_a_photo_without_a_face_is_200_with_count_0(client):
    blank = image_bytes(Image.new("RGB", (200, 150), (200, 180, 160)))
    response = faces_of(client, blank, crops="true")
    assert response.status_code == 200
    assert response.json["count"] == 0
    assert response.json["faces"] == []
    assert response.json["image_size"] == [200, 150]


@pytest.mark.parametrize(
    "form",
    [
        {"crops": "yes"},
        {"crops": "True"},
        {"crops": "1"},
        {"crops": ""},
        {"max_faces": "0"},
        {"max_faces": "101"},
        {"max_faces": "-1"},
        {"max_faces": "2.0"},
        {"max_faces": " 2"},
        {"max_faces": "\u0663"},  # an Arabic-Indic 3: a digit to Python, not ASCII
        {"max_faces": ""},
        {"max_faces": "1000"},
    ],
    ids=lambda form: repr(form),
)
def test_bad_parameters_are_400_before_the_photo_is_looked_at(client, form):
    response = client.post("/faces", data={**files(photo=b"not an image"), **form})
    assert_error(response, 400, "invalid_parameter")
    assert next(iter(form)) in response.json["error"]["message"]


def test_a_missing_or_undecodable_photo_is_a_json_error(client):
    assert_error(client.post("/faces", data={"crops": "true"}), 400, "missing_field")
    assert_error(faces_of(client, b"text, not a photo"), 415, "unsupported_image")


def test_api_keys_are_required_when_keys_are_on(settings, engine, face_bytes):
    keyed = create_app(settings.replace(api_keys=KEY_A), engine=engine).test_client()
    photo = face_bytes(SAME[0])
    assert_error(faces_of(keyed, photo), 401, "unauthorized")
    wrong = keyed.post("/faces", data=files(photo=photo), headers={"X-API-Key": "x" * len(KEY_A)})
    assert_error(wrong, 401, "unauthorized")
    allowed = keyed.post("/faces", data=files(photo=photo), headers={"X-API-Key": KEY_A})
    assert allowed.status_code == 200 and allowed.json["count"] == 1


def test_each_request_is_published_to_the_metrics_like_the_other_routes(
    settings, engine, broker, subscriber, face_bytes
):
    app = create_app(settings.replace(mqtt_host="127.0.0.1", mqtt_port=broker.port), engine=engine)
    client = app.test_client()
    try:
        assert faces_of(client, face_bytes(THREE_FACES)).status_code == 200
        assert faces_of(client, face_bytes(SAME[0]), max_faces="0").status_code == 400
        messages = subscriber.wait_for(2)
    finally:
        app.extensions["facematch"].publisher.close(timeout=1)
    ok, refused = messages[:2]
    assert (ok["endpoint"], ok["status"], ok["error_code"]) == ("/faces", 200, None)
    assert [(f["role"], f["count"]) for f in ok["faces"]] == [("photo", 3)]
    assert ok["latency_ms"]["detection"] > 0 and ok["match"] is None
    assert (refused["endpoint"], refused["status"]) == ("/faces", 400)
    assert refused["error_code"] == "invalid_parameter"
