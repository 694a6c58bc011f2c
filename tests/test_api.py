"""The HTTP API on real LFW faces: decisions, response shape, and every client error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facematch.api.app import create_app
from tests.support import (
    DIFFERENT,
    DIFFERENT_2,
    SAME,
    SAME_2,
    assert_error,
    files,
    image_bytes,
    photo_match,
    png_declaring,
)


def test_ping_answers_ok(client):
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


@pytest.mark.parametrize("pair", [SAME, SAME_2])
def test_same_person_photos_match(client, face_bytes, pair):
    response = photo_match(client, face_bytes(pair[0]), face_bytes(pair[1]))
    assert response.status_code == 200
    assert response.json["match"] is True
    assert response.json["distance"] <= response.json["threshold"]


@pytest.mark.parametrize("pair", [DIFFERENT, DIFFERENT_2])
def test_different_people_do_not_match(client, face_bytes, pair):
    response = photo_match(client, face_bytes(pair[0]), face_bytes(pair[1]))
    assert response.status_code == 200
    assert response.json["match"] is False
    assert response.json["distance"] > response.json["threshold"]


def test_response_reports_faces_model_and_stage_latencies(client, face_bytes):
    body = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1])).json
    assert body["metric"] == "cosine"
    assert body["model"] == "casia-webface"
    for role in ("reference", "sample"):
        face = body["faces"][role]
        assert face["count"] == 1
        assert 0.9 < face["probability"] <= 1.0
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 250
        assert face["image_size"] == [250, 250]
    latency = body["latency_ms"]
    assert latency["detection"] > 0 and latency["embedding"] > 0
    assert latency["total"] >= latency["detection"] + latency["embedding"]


def test_threshold_field_may_tighten_the_default(client, face_bytes):
    reference, sample = face_bytes(SAME[0]), face_bytes(SAME[1])
    default = photo_match(client, reference, sample).json
    strict = photo_match(client, reference, sample, threshold="0").json
    assert default["match"] is True
    assert strict["threshold"] == 0.0 and strict["match"] is False


def test_threshold_looser_than_the_configured_one_is_403_naming_the_limit(client, face_bytes):
    response = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1]), threshold="2")
    assert_error(response, 403, "threshold_not_allowed")
    assert "0.6397" in response.json["error"]["message"]


def test_operator_may_allow_a_looser_threshold(settings, engine, face_bytes):
    app = create_app(settings.replace(max_threshold=2.0), engine=engine)
    reference, sample = face_bytes(DIFFERENT[0]), face_bytes(DIFFERENT[1])
    lenient = photo_match(app.test_client(), reference, sample, threshold="2").json
    assert lenient["threshold"] == 2.0 and lenient["match"] is True


def test_euclidean_metric_is_the_unit_vector_distance(client, face_bytes):
    reference, sample = face_bytes(SAME[0]), face_bytes(SAME[1])
    cosine = photo_match(client, reference, sample).json
    euclidean = photo_match(client, reference, sample, metric="euclidean").json
    assert euclidean["metric"] == "euclidean"
    assert euclidean["distance"] == pytest.approx(np.sqrt(2 * cosine["distance"]), abs=1e-5)
    assert euclidean["threshold"] == pytest.approx(np.sqrt(2 * cosine["threshold"]))


def test_exif_orientation_is_honoured(client, face_bytes):
    upright = Image.open(io.BytesIO(face_bytes(SAME[0])))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it 90 degrees clockwise to display
    sideways = image_bytes(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())
    body = photo_match(client, face_bytes(SAME[0]), sideways).json
    assert body["faces"]["sample"]["image_size"] == [250, 250]
    assert body["distance"] < 0.05


def _two_faces(face_bytes) -> bytes:
    canvas = Image.new("RGB", (500, 250), (128, 128, 128))
    canvas.paste(Image.open(io.BytesIO(face_bytes(DIFFERENT_2[1]))), (0, 0))
    canvas.paste(Image.open(io.BytesIO(face_bytes(SAME[1]))), (250, 0))
    return image_bytes(canvas)


def test_every_face_is_compared_on_request_where_the_operator_allows_it(
    settings, engine, face_bytes
):
    client = create_app(settings.replace(allow_all_faces=True), engine=engine).test_client()
    body = photo_match(client, face_bytes(SAME[0]), _two_faces(face_bytes), sample_faces="all").json
    assert body["faces"]["sample"]["count"] == 2
    assert len(body["sample_faces"]) == 2
    decided = body["sample_faces"][body["decided_by"]]
    assert decided["box"][0] >= 250  # Aaron Peirsol stands on the right
    assert decided["match"] is True and body["match"] is True
    assert body["distance"] == min(face["distance"] for face in body["sample_faces"])


def test_all_sample_faces_is_403_unless_the_operator_allows_it(client, face_bytes):
    response = photo_match(client, face_bytes(SAME[0]), _two_faces(face_bytes), sample_faces="all")
    assert_error(response, 403, "sample_faces_not_allowed")


def test_compared_sample_faces_are_bounded_by_the_best_ranked(settings, engine, face_bytes):
    app = create_app(settings.replace(allow_all_faces=True, max_sample_faces=1), engine=engine)
    body = photo_match(
        app.test_client(), face_bytes(SAME[0]), _two_faces(face_bytes), sample_faces="all"
    ).json
    primary = photo_match(app.test_client(), face_bytes(SAME[0]), _two_faces(face_bytes)).json
    assert body["faces"]["sample"]["count"] == 2
    assert len(body["sample_faces"]) == 1
    assert body["sample_faces"][0]["box"] == primary["faces"]["sample"]["box"]
    assert body["distance"] == primary["distance"]


def test_primary_face_decides_by_default(client, face_bytes):
    body = photo_match(client, face_bytes(SAME[0]), _two_faces(face_bytes)).json
    assert body["faces"]["sample"]["count"] == 2
    assert "sample_faces" not in body


# --- client errors ---


def test_missing_sample_is_400_missing_field(client, face_bytes):
    response = client.post("/photo_match", data=files(reference=face_bytes(SAME[0])))
    assert_error(response, 400, "missing_field")


def test_request_that_is_not_multipart_is_400_missing_field(client):
    response = client.post("/photo_match", json={"reference": "x"})
    assert_error(response, 400, "missing_field")


@pytest.mark.parametrize(
    "threshold",
    [
        "abc",
        "-1",
        "nan",
        "inf",
        "2.5",
        "1e309",
        "1e-3",
        " 0.5",
        "0.5 ",
        "0.5\n",
        "+0.5",
        "١",
        "１",
        "0٫5",
        "0.５",
        "1_0",
    ],
)
def test_unusable_threshold_is_400(client, face_bytes, threshold):
    response = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1]), threshold=threshold)
    assert_error(response, 400, "invalid_parameter")


@pytest.mark.parametrize("field,value", [("metric", "manhattan"), ("sample_faces", "best")])
def test_unknown_option_value_is_400(client, face_bytes, field, value):
    response = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1]), **{field: value})
    assert_error(response, 400, "invalid_parameter")


@pytest.mark.parametrize("content", [b"", b"hello, I am text", b"\xff\xd8\xff\xe0" + b"\0" * 64])
def test_undecodable_upload_is_415(client, face_bytes, content):
    response = photo_match(client, face_bytes(SAME[0]), content)
    assert_error(response, 415, "unsupported_image")


def test_truncated_jpeg_is_415(client, face_bytes):
    data = face_bytes(SAME[1])
    response = photo_match(client, face_bytes(SAME[0]), data[: len(data) // 3])
    assert_error(response, 415, "unsupported_image")


def test_upload_over_the_size_limit_is_413(settings, engine, face_bytes):
    from facematch.api.app import create_app

    small = create_app(settings.replace(max_upload_mb=0.05), engine=engine).test_client()
    response = photo_match(small, face_bytes(SAME[0]), b"\xff" * 100_000)
    assert_error(response, 413, "payload_too_large")


def test_huge_declared_pixel_count_is_refused_before_decoding(client, face_bytes):
    response = photo_match(client, face_bytes(SAME[0]), png_declaring(100_000, 100_000))
    assert_error(response, 413, "image_too_large")


def test_decompression_bomb_is_refused(client, face_bytes):
    bomb = image_bytes(Image.new("L", (8000, 8000)), "PNG", optimize=True)
    assert len(bomb) < 200_000
    response = photo_match(client, face_bytes(SAME[0]), bomb)
    assert_error(response, 413, "image_too_large")


def test_photo_without_a_face_is_422_no_face(client, face_bytes):
    blank = image_bytes(Image.new("RGB", (250, 250), (200, 180, 160)))
    response = photo_match(client, face_bytes(SAME[0]), blank)
    assert_error(response, 422, "no_face")
    assert "sample" in response.json["error"]["message"]


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "I;16", "P"])
def test_other_pixel_formats_are_converted(client, face_bytes, mode):
    photo = Image.open(io.BytesIO(face_bytes(SAME[1])))
    if mode == "I;16":
        converted = Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257)
    else:
        converted = photo.convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    response = photo_match(client, face_bytes(SAME[0]), image_bytes(converted, fmt))
    assert response.status_code == 200, response.json
    assert response.json["faces"]["sample"]["count"] == 1


def test_unknown_route_is_json_404(client):
    assert_error(client.get("/nowhere"), 404, "not_found")


def test_wrong_method_is_json_405(client):
    assert_error(client.get("/photo_match"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "path,allowed", [("/photo_match", {"POST", "OPTIONS"}), ("/ping", {"GET", "HEAD", "OPTIONS"})]
)
def test_options_is_a_bodiless_204_listing_the_allowed_methods(client, path, allowed):
    response = client.options(path)
    assert response.status_code == 204
    assert set(response.headers["Allow"].split(", ")) == allowed
    assert response.get_data() == b"" and "Content-Type" not in response.headers
