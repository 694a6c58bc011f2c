"""The face quality measures and the gate: every face carries its quality,
``FACEMATCH_QUALITY=warn`` lists what is below the bars, ``reject`` refuses a blurred, tiny or
dark face with 422 ``low_quality`` and its reasons, and lets through the LFW photos it should."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from facematch.api.app import create_app
from facematch.config import ConfigError
from facematch.decision import quality as face_quality
from facematch.decision.quality import FaceQuality, QualityBars, QualityGate
from tests.support import SAME, SAME_2, assert_error, files, image_bytes, photo_match

FRONTAL = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 62.0], [35.0, 80.0], [65.0, 80.0]])


def degraded(data: bytes, kind: str) -> bytes:
    """An LFW photo blurred, shrunk (face about 26 px wide) or darkened past the bars."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if kind == "blurred":
        image = image.filter(ImageFilter.GaussianBlur(6))
    elif kind == "tiny":
        image = image.resize((75, 75), Image.BILINEAR)
    elif kind == "dark":
        image = Image.eval(image, lambda v: int(v * 0.12))
    return image_bytes(image)


@pytest.fixture(scope="module")
def gated(settings, engine):
    """A client of an app with the quality gate in ``mode``."""

    def make(mode: str):
        return create_app(settings.replace(quality=mode), engine=engine).test_client()

    return make


def test_a_frontal_face_has_pose_near_zero_and_turning_shows_in_yaw_and_roll():
    yaw, pitch, roll = face_quality.pose(FRONTAL)
    assert abs(yaw) < 1 and abs(pitch) < 10 and abs(roll) < 1
    turned = FRONTAL.copy()
    turned[2, 0] += 15  # the nose moves sideways: the head turned
    assert face_quality.pose(turned)[0] > 30
    angle = np.radians(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = FRONTAL @ rotation.T
    yaw_r, pitch_r, roll_r = face_quality.pose(rolled)
    assert roll_r == pytest.approx(30, abs=0.01)
    assert yaw_r == pytest.approx(yaw, abs=0.01) and pitch_r == pytest.approx(pitch, abs=0.01)
    assert face_quality.pose(None) == (None, None, None)


def test_blur_lowers_sharpness_and_darkening_lowers_brightness(face_bytes):
    image = Image.open(io.BytesIO(face_bytes(SAME[1]))).convert("RGB")
    box = (80.0, 70.0, 170.0, 180.0)
    plain = face_quality.measure(image, box, FRONTAL + 80, 0.99)
    blurred = face_quality.measure(image.filter(ImageFilter.GaussianBlur(4)), box, None, 0.99)
    dark = face_quality.measure(Image.eval(image, lambda v: v // 5), box, None, 0.99)
    assert plain.width_px == 90 and plain.probability == 0.99
    assert blurred.sharpness < plain.sharpness / 5
    assert dark.brightness < plain.brightness / 4
    assert 0 <= plain.clipped < 0.2 and blurred.yaw is None


def test_the_gate_names_each_measure_below_its_bar():
    bars = QualityBars()
    low = FaceQuality(
        width_px=bars.min_width_px - 2,
        sharpness=bars.min_sharpness / 2,
        yaw=bars.max_yaw + 10,
        pitch=0.0,
        roll=0.0,
        brightness=bars.min_brightness - 5,
        clipped=0.0,
        probability=1.0,
    )
    reasons = QualityGate("reject").reasons(low)
    assert reasons[0] == f"face {bars.min_width_px - 2:.0f} px wide, needs {bars.min_width_px:.0f}"
    assert len(reasons) == 4
    assert any("blurred" in r for r in reasons) and any("dark" in r for r in reasons)
    assert any("sideways" in r for r in reasons)


def test_an_unknown_quality_mode_is_refused(settings, engine):
    with pytest.raises(ConfigError, match="FACEMATCH_QUALITY"):
        create_app(settings.replace(quality="strict"), engine=engine)


def test_every_face_carries_its_quality_and_the_gate_is_off_by_default(client, face_bytes):
    body = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1])).json
    for role in ("reference", "sample"):
        quality = body["faces"][role]["quality"]
        assert quality["width_px"] > 60 and quality["sharpness"] > 0
        assert quality["probability"] == round(body["faces"][role]["probability"], 4)
        assert "below_bar" not in body["faces"][role]
    assert "quality_warnings" not in body
    assert client.get("/health").json["quality"] == "off"


@pytest.mark.parametrize(
    ("kind", "words"),
    [("blurred", "too blurred"), ("tiny", "px wide, needs"), ("dark", "too dark")],
)
def test_reject_refuses_a_blurred_tiny_or_dark_face_with_reasons(gated, face_bytes, kind, words):
    sample = degraded(face_bytes(SAME[1]), kind)
    response = photo_match(gated("reject"), face_bytes(SAME[0]), sample)
    assert_error(response, 422, "low_quality")
    reasons = response.json["error"]["reasons"]
    assert any(r.startswith("sample: ") and words in r for r in reasons), reasons


@pytest.mark.parametrize("pair", [SAME, SAME_2])
def test_reject_lets_ordinary_lfw_photos_through(gated, face_bytes, pair):
    response = photo_match(gated("reject"), face_bytes(pair[0]), face_bytes(pair[1]))
    assert response.status_code == 200, response.json
    assert response.json["match"] is True
    assert response.json["faces"]["sample"]["below_bar"] == []


def test_reject_refuses_a_low_quality_photo_to_enrol_or_embed(gated, face_bytes):
    client = gated("reject")
    blurred = degraded(face_bytes(SAME[1]), "blurred")
    assert_error(client.post("/embeddings", data=files(photo=blurred)), 422, "low_quality")
    enrol = client.post("/galleries/q/subjects/s/faces", data=files(photo=blurred))
    assert_error(enrol, 422, "low_quality")


def test_warn_answers_and_lists_what_is_below_the_bar(gated, face_bytes):
    client = gated("warn")
    sample = degraded(face_bytes(SAME[1]), "blurred")
    body = photo_match(client, face_bytes(SAME[0]), sample).json
    assert "match" in body
    assert body["faces"]["reference"]["below_bar"] == []
    assert body["faces"]["sample"]["below_bar"]
    assert body["quality_warnings"] == [
        f"sample: {r}" for r in body["faces"]["sample"]["below_bar"]
    ]
    clean = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1])).json
    assert clean["quality_warnings"] == []
