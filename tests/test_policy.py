"""The decision policy, pure: what a request's form fields may and may not change."""

from __future__ import annotations

import math

import pytest

from facematch.api.errors import status_of
from facematch.config import ConfigError, Settings
from facematch.decision.policy import Decision, DecisionPolicy, convert_threshold, parse_decimal
from facematch.decision.scores import DEFAULT_THRESHOLDS
from facematch.errors import InvalidParameter, SampleFacesNotAllowed, ThresholdNotAllowed

DEFAULT = DecisionPolicy.from_settings(Settings())


def test_defaults_are_the_lfw_threshold_one_primary_face_and_no_loosening():
    assert (
        DecisionPolicy(
            metric="cosine",
            threshold=DEFAULT_THRESHOLDS["cosine"],
            max_threshold=DEFAULT_THRESHOLDS["cosine"],
            max_sample_faces=10,
            allow_all_faces=False,
        )
        == DEFAULT
    )
    assert DEFAULT.for_request({}) == Decision("cosine", 0.6397, "primary", 1)


def test_settings_are_read_from_facematch_variables():
    settings = Settings.from_env(
        {
            "FACEMATCH_THRESHOLD": "0.5",
            "FACEMATCH_MAX_THRESHOLD": "0.7",
            "FACEMATCH_MAX_SAMPLE_FACES": "3",
            "FACEMATCH_ALLOW_ALL_FACES": "true",
        }
    )
    assert DecisionPolicy.from_settings(settings) == DecisionPolicy("cosine", 0.5, 0.7, 3, True)


@pytest.mark.parametrize("raw", ["0", "0.3", ".5", "0.6397", "0.6397000", "00.1"])
def test_a_request_may_tighten_or_restate_the_threshold(raw):
    assert DEFAULT.for_request({"threshold": raw}).threshold == float(raw)


@pytest.mark.parametrize("raw", ["0.647", "0.63970001", "1", "2", "2.0"])
def test_a_looser_threshold_is_refused_naming_the_limit(raw):
    with pytest.raises(ThresholdNotAllowed, match="0.6397") as refused:
        DEFAULT.for_request({"threshold": raw})
    assert status_of(refused.value) == 403 and refused.value.code == "threshold_not_allowed"


def test_the_operator_may_allow_looser_thresholds_up_to_a_maximum():
    policy = DecisionPolicy.from_settings(Settings(max_threshold=0.8))
    assert policy.for_request({}).threshold == 0.6397  # the default is unchanged
    assert policy.for_request({"threshold": "0.8"}).threshold == 0.8
    with pytest.raises(ThresholdNotAllowed, match="0.8"):
        policy.for_request({"threshold": "0.81"})


@pytest.mark.parametrize(
    "raw",
    [
        "2.5",
        "-0",
        "+0.5",
        " 0.5",
        "0.5 ",
        "0.5\n",
        "1e-3",
        "1e309",
        "nan",
        "inf",
        "Infinity",
        "0x1",
        "1_0",
        "١",
        "١٫٥",
        "１",
        "0.５",
        "½",
        ".",
        "0" * 40,
    ],
)
def test_numbers_are_ascii_decimals_only(raw):
    with pytest.raises(InvalidParameter):
        DEFAULT.for_request({"threshold": raw})


def test_python_float_would_have_accepted_the_unicode_digits():
    """Why the regex exists: ``float`` reads Arabic-Indic and full-width digits."""
    assert float("١") == float("１") == 1.0
    with pytest.raises(InvalidParameter):
        parse_decimal("threshold", "١")


def test_euclidean_is_decided_at_the_equivalent_of_the_cosine_policy():
    decision = DEFAULT.for_request({"metric": "euclidean"})
    assert decision.threshold == pytest.approx(math.sqrt(2 * 0.6397))
    assert DEFAULT.for_request({"metric": "euclidean", "threshold": "1.13"}).threshold == 1.13
    for raw in ("1.1312", "1.2", "2"):  # 1.1312 is just past sqrt(2 * 0.6397) = 1.13111...
        with pytest.raises(ThresholdNotAllowed, match="1.13111"):
            DEFAULT.for_request({"metric": "euclidean", "threshold": raw})


def test_a_euclidean_policy_limits_cosine_requests_by_its_equivalent():
    policy = DecisionPolicy.from_settings(Settings(metric="euclidean"))
    assert policy.threshold == DEFAULT_THRESHOLDS["euclidean"]
    assert policy.limit_for("cosine") == pytest.approx(1.1311**2 / 2)
    with pytest.raises(ThresholdNotAllowed):
        policy.for_request({"metric": "cosine", "threshold": "0.65"})


@pytest.mark.parametrize("value", [0.0, 0.3, 0.6397, 1.0, 2.0])
def test_threshold_conversion_round_trips(value):
    there = convert_threshold(value, "cosine", "euclidean")
    assert convert_threshold(there, "euclidean", "cosine") == pytest.approx(value)


@pytest.mark.parametrize("form", [{"metric": "manhattan"}, {"metric": ""}, {"sample_faces": "x"}])
def test_unknown_options_are_invalid(form):
    with pytest.raises(InvalidParameter):
        DEFAULT.for_request(form)


def test_all_sample_faces_is_off_unless_allowed_and_then_bounded():
    with pytest.raises(SampleFacesNotAllowed) as refused:
        DEFAULT.for_request({"sample_faces": "all"})
    assert status_of(refused.value) == 403
    allowed = DecisionPolicy.from_settings(Settings(allow_all_faces=True, max_sample_faces=4))
    assert allowed.for_request({"sample_faces": "all"}) == Decision("cosine", 0.6397, "all", 4)
    assert allowed.for_request({"sample_faces": "primary"}).max_sample_faces == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"metric": "manhattan"},
        {"threshold": 2.5},
        {"threshold": float("nan")},
        {"max_threshold": 0.5},  # below the default threshold
        {"max_threshold": float("inf")},
        {"max_sample_faces": 0},
    ],
)
def test_unusable_policy_settings_stop_the_start(changes):
    with pytest.raises(ConfigError):
        DecisionPolicy.from_settings(Settings(**changes))


def test_the_policy_is_frozen():
    with pytest.raises(AttributeError):
        DEFAULT.max_threshold = 2.0
