"""Calibrated decisions: every decision's far/frr match a recount on the shipped table's LFW View 1
distances, ``threshold=far:RATE`` and ``FACEMATCH_TARGET_FAR`` resolve on the same table, the
operator's limit holds for them, and a configuration without a table says so in /health."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from facematch.api.app import create_app
from facematch.config import ConfigError
from facematch.decision import calibration
from facematch.decision.calibration import Calibration
from facematch.decision.policy import DecisionPolicy
from tests.support import DIFFERENT, SAME, assert_error, files, photo_match


@pytest.fixture(scope="module")
def table(engine) -> dict:
    """The shipped table of the test engine's configuration, as stored."""
    path = calibration.table_path(engine.options)
    assert path.is_file(), f"{path.name} missing: python -m deployment_utils.calibration"
    return json.loads(path.read_text())


def recount_far(table: dict, distance: float) -> float:
    different = np.array(table["distances"]["different"])
    return float((different <= distance).sum() / len(different))


def recount_frr(table: dict, threshold: float) -> float:
    same = np.array(table["distances"]["same"])
    return float((same > threshold).sum() / len(same))


def test_the_shipped_table_is_view_1_with_its_provenance(table, engine):
    provenance = table["provenance"]
    assert provenance["pair_files"] == ["pairsDevTrain.txt", "pairsDevTest.txt"]
    assert provenance["command"].startswith("python -m deployment_utils.calibration")
    assert len(provenance["commit"]) >= 40 and provenance["date"]
    assert provenance["pairs"]["same"] == len(table["distances"]["same"]) == 1600
    assert provenance["pairs"]["different"] == len(table["distances"]["different"]) == 1600
    assert provenance["settings"] == calibration.embedding_settings(engine.options)
    assert table["key"] == calibration.embedding_key(engine.options)
    assert "LFW" in table["population"] and "light-skinned" in table["population"]


@pytest.mark.parametrize("distance", [0.3, 0.5, 0.6397, 0.7, 0.9])
def test_far_and_frr_are_the_shares_of_the_stored_distances(table, distance):
    loaded = Calibration.from_table(table, "t")
    assert loaded.far(distance) == recount_far(table, distance)
    assert loaded.frr(distance) == recount_frr(table, distance)


@pytest.mark.parametrize("pair", [SAME, DIFFERENT])
def test_a_decision_carries_far_and_frr_recounted_on_the_table(client, face_bytes, table, pair):
    body = photo_match(client, face_bytes(pair[0]), face_bytes(pair[1])).json
    calibrated = body["calibration"]
    assert calibrated["far"] == pytest.approx(recount_far(table, body["distance"]), abs=1e-6)
    assert calibrated["frr"] == pytest.approx(recount_frr(table, body["threshold"]), abs=1e-6)
    assert calibrated["pairs"] == {"same": 1600, "different": 1600}
    assert calibrated["population"] == table["population"]


def test_a_euclidean_decision_is_calibrated_at_the_same_boundary(client, face_bytes, table):
    body = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1]), metric="euclidean").json
    cosine = body["distance"] ** 2 / 2
    assert body["calibration"]["far"] == pytest.approx(recount_far(table, cosine), abs=1e-6)
    assert body["calibration"]["frr"] == pytest.approx(
        recount_frr(table, body["threshold"] ** 2 / 2), abs=1e-6
    )


@pytest.mark.parametrize("rate", ["0.001", "0.0025", ".005"])
def test_a_far_threshold_is_the_loosest_whose_recounted_far_meets_the_target(
    client, face_bytes, table, rate
):
    response = photo_match(
        client, face_bytes(SAME[0]), face_bytes(SAME[1]), threshold="far:" + rate
    )
    assert response.status_code == 200, response.json
    threshold = response.json["threshold"]
    different = np.sort(table["distances"]["different"])
    far = recount_far(table, threshold)
    assert far <= float(rate)
    allowed = int(np.floor(float(rate) * len(different) + 1e-9))
    assert (different <= threshold).sum() == allowed  # one more pair would pass the target
    assert response.json["calibration"]["frr"] == pytest.approx(recount_frr(table, threshold))


def test_a_far_target_below_what_the_sample_resolves_is_400_naming_the_smallest(client, face_bytes):
    response = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1]), threshold="far:0.0001")
    assert_error(response, 400, "far_unreachable")
    assert "1/1600 = 0.000625" in response.json["error"]["message"]


@pytest.mark.parametrize("raw", ["far:", "far:-0.1", "far:1e-3", "far:0", "far:2", "far: 0.1"])
def test_a_far_rate_that_is_not_a_plain_rate_is_400(client, face_bytes, raw):
    response = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1]), threshold=raw)
    assert_error(response, 400, "invalid_parameter")


def test_a_far_target_looser_than_the_operators_threshold_is_403(client, face_bytes):
    # The default threshold 0.6397 lets 0.6875% of View 1's different pairs through: far:0.05
    # asks for a looser one.
    response = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1]), threshold="far:0.05")
    assert_error(response, 403, "threshold_not_allowed")


def test_target_far_sets_the_configured_threshold_and_health_reports_it(settings, engine, table):
    app = create_app(settings.replace(target_far=0.001), engine=engine)
    health = app.test_client().get("/health").json
    threshold = health["threshold"]
    assert health["target_far"] == 0.001
    assert recount_far(table, threshold) <= 0.001
    assert threshold == Calibration.from_table(table, "t").threshold_at_far(0.001)
    # The same target in a request is not looser than the operator's: allowed.
    form = {"threshold": "far:0.001"}
    policy = DecisionPolicy.from_settings(settings.replace(target_far=0.001), app_table(table))
    assert policy.for_request(form).threshold == threshold


def app_table(table: dict) -> Calibration:
    return Calibration.from_table(table, "t")


@pytest.mark.parametrize(
    "changes",
    [{"target_far": 0.0001}, {"target_far": 0.001, "threshold": 0.5}, {"target_far": 1.5}],
)
def test_unusable_target_far_settings_are_refused(settings, engine, changes):
    with pytest.raises(ConfigError):
        create_app(settings.replace(**changes), engine=engine)


def test_without_a_table_decisions_have_no_calibration_and_health_says_why(
    settings, engine, face_bytes, tmp_path
):
    app = create_app(settings.replace(calibration_dir=str(tmp_path)), engine=engine)
    client = app.test_client()
    health = client.get("/health").json["calibration"]
    assert health["available"] is False
    assert "deployment_utils.calibration" in health["reason"]
    body = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1])).json
    assert body["match"] is True and "calibration" not in body
    response = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1]), threshold="far:0.01")
    assert_error(response, 400, "invalid_parameter")
    with pytest.raises(ConfigError, match="TARGET_FAR"):
        create_app(settings.replace(calibration_dir=str(tmp_path), target_far=0.01), engine=engine)


def test_health_names_the_table_in_use(client):
    health = client.get("/health").json["calibration"]
    assert health["available"] is True
    assert health["pairs"] == {"same": 1600, "different": 1600}
    assert health["smallest_far"] == 1 / 1600


def test_a_table_from_another_directory_is_used_and_a_broken_one_refused(
    settings, engine, face_bytes, tmp_path, table
):
    path = calibration.table_path(engine.options)
    shutil.copy(path, tmp_path / path.name)
    app = create_app(settings.replace(calibration_dir=str(tmp_path)), engine=engine)
    assert app.test_client().get("/health").json["calibration"]["available"] is True
    (tmp_path / path.name).write_text('{"population": "x"}')
    with pytest.raises(ConfigError, match="unusable"):
        create_app(settings.replace(calibration_dir=str(tmp_path)), engine=engine)


def test_gallery_verify_and_identify_are_calibrated(settings, engine, face_bytes, tmp_path, table):
    url = f"sqlite:///{tmp_path / 'gallery.db'}"
    client = create_app(settings.replace(gallery_url=url), engine=engine).test_client()
    enrol = client.post("/galleries/g/subjects/aaron/faces", data=files(photo=face_bytes(SAME[0])))
    assert enrol.status_code == 201
    verify = client.post(
        "/galleries/g/subjects/aaron/verify", data=files(sample=face_bytes(SAME[1]))
    ).json
    assert verify["calibration"]["far"] == pytest.approx(recount_far(table, verify["distance"]))
    assert verify["calibration"]["frr"] == pytest.approx(recount_frr(table, verify["threshold"]))
    identify = client.post("/galleries/g/identify", data=files(sample=face_bytes(SAME[1]))).json
    nearest = identify["candidates"][0]["distance"]
    assert identify["calibration"]["far"] == pytest.approx(recount_far(table, nearest))
    assert identify["calibration"]["frr"] == pytest.approx(
        recount_frr(table, identify["threshold"])
    )
