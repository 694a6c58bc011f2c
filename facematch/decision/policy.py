"""The operator's decision policy: which metric, threshold and sample faces a request may use.

A client may be hostile: it must not be able to turn a non-match into a match by asking for a
looser threshold, another metric, or more sample faces to compare. ``DecisionPolicy`` holds
what the operator configured (``FACEMATCH_METRIC``, ``FACEMATCH_THRESHOLD``,
``FACEMATCH_MAX_THRESHOLD``, ``FACEMATCH_MAX_SAMPLE_FACES``, ``FACEMATCH_ALLOW_ALL_FACES``) and
``for_request`` turns a request's form fields into the ``Decision`` every deciding route uses:

- ``threshold`` may tighten the configured threshold, never loosen it past
  ``FACEMATCH_MAX_THRESHOLD`` (default: the configured threshold itself). A looser one is refused
  with 403 ``threshold_not_allowed``, naming the limit; it is never clamped silently.
- ``metric``: the policy is stated once, in the configured metric. On unit vectors the euclidean
  distance is ``sqrt(2 * cosine distance)``, a monotonic map, so a threshold in one metric is
  the same decision boundary as its equivalent in the other. A request in the other metric gets
  the equivalent of the configured threshold, and its limit is the equivalent of the maximum.
- ``sample_faces=all`` compares up to ``FACEMATCH_MAX_SAMPLE_FACES`` sample faces (the
  best-ranked ones) and matches if any does, which multiplies false accepts (about
  ``1 - (1 - p)**n`` for n faces at a per-comparison false-accept rate p). It is refused with
  403 ``sample_faces_not_allowed`` unless ``FACEMATCH_ALLOW_ALL_FACES`` is on.
- Galleries (``api.gallery_routes``) go through the same checks. Verifying against a subject is a
  1:1 decision (``for_request``). Identifying (1:N) uses its own threshold,
  ``FACEMATCH_IDENTIFY_THRESHOLD`` (default: ``gallery_scoring.DEFAULT_IDENTIFY_THRESHOLD``, the
  cosine threshold measured on LFW for 1% false identifications), and its own limit,
  ``FACEMATCH_MAX_IDENTIFY_THRESHOLD`` (default: the identify threshold itself), through
  ``for_identify``: false accepts grow with the gallery's size, so the operator states it apart.
  The verify ``rule`` a request may choose is one of ``FACEMATCH_VERIFY_RULES`` (default: only
  ``centroid``, the rule measured best; the first listed is the default); another is refused
  with 403 ``rule_not_allowed``: rules differ in what they accept, so the operator picks.
- ``threshold=far:RATE`` (and ``FACEMATCH_TARGET_FAR``, which then sets the configured
  threshold) asks for the loosest threshold whose false-accept rate on the calibration table
  (``calibration``) stays at or below RATE; it is then checked like a number (403 when looser
  than the limit). A rate below what the table's sample resolves (1 / its different-person
  pairs) is 400 ``far_unreachable``, naming the smallest; without a table it is 400.
- Numbers are ASCII decimals only (``0.5``, ``1``, ``.5``): no sign, exponent, whitespace,
  ``nan``/``inf`` or non-ASCII digits (Python's ``float`` accepts ``"١"`` and ``"１"``).

Pure: no Flask, no model; ``for_request`` takes a mapping of form fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from facematch.config import ConfigError, Settings
from facematch.decision import gallery_scoring, scores
from facematch.decision.calibration import Calibration
from facematch.errors import (
    InvalidParameter,
    RuleNotAllowed,
    SampleFacesNotAllowed,
    ThresholdNotAllowed,
    UnreachableTarget,
)

SAMPLE_FACES = ("primary", "all")
#: An ASCII decimal: digits with an optional fraction, or a bare fraction; nothing else.
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_MAX_NUMBER_LENGTH = 32
FAR_PREFIX = "far:"


def parse_decimal(name: str, raw: str) -> float:
    """The value of form field ``name`` written as an ASCII decimal, else ``InvalidParameter``.

    ``re.fullmatch`` with an explicit ``[0-9]`` class: ``\\d`` and ``float`` accept any Unicode
    digit, and ``$`` would let a trailing newline through."""
    if len(raw) > _MAX_NUMBER_LENGTH or not _DECIMAL.fullmatch(raw):
        raise InvalidParameter(
            f"'{name}' must be a plain decimal number written with ASCII digits, such as 0.5"
        )
    return float(raw)


def convert_threshold(value: float, source: str, target: str) -> float:
    """The threshold in metric ``target`` that draws the same boundary as ``value`` in
    ``source`` (on unit vectors euclidean = sqrt(2 * cosine))."""
    if source == target:
        return value
    if source == "cosine" and target == "euclidean":
        return math.sqrt(2.0 * value)
    if source == "euclidean" and target == "cosine":
        return value * value / 2.0
    raise ValueError(f"unknown metric pair {source!r} -> {target!r}")


@dataclass(frozen=True)
class Decision:
    """How one request is decided: its metric and threshold, the sample-face mode, and how many
    sample faces (the best-ranked first) may be embedded and compared."""

    metric: str
    threshold: float
    sample_faces: str
    max_sample_faces: int


@dataclass(frozen=True)
class DecisionPolicy:
    """The operator's policy. ``threshold`` and ``max_threshold`` are in ``metric``'s units."""

    metric: str = "cosine"
    threshold: float = scores.DEFAULT_THRESHOLDS["cosine"]
    max_threshold: float = scores.DEFAULT_THRESHOLDS["cosine"]
    max_sample_faces: int = 10
    allow_all_faces: bool = False
    max_samples: int = 5  # sample photos one burst may send (FACEMATCH_MAX_SAMPLES)
    identify_threshold: float | None = None  # the 1:N threshold; None: the measured default
    max_identify_threshold: float | None = None  # None: the identify threshold itself
    verify_rules: tuple[str, ...] = (gallery_scoring.DEFAULT_RULE,)  # the first: the default
    calibration: Calibration | None = field(default=None, compare=False)  # for far: targets
    target_far: float | None = None  # the rate that set ``threshold`` (FACEMATCH_TARGET_FAR)

    def __post_init__(self) -> None:
        if self.metric not in scores.METRICS:
            raise ConfigError(f"FACEMATCH_METRIC must be one of {', '.join(scores.METRICS)}")
        for variable, value in (
            ("FACEMATCH_THRESHOLD", self.threshold),
            ("FACEMATCH_MAX_THRESHOLD", self.max_threshold),
        ):
            if not math.isfinite(value) or not 0.0 <= value <= 2.0:
                raise ConfigError(f"{variable} must be a number between 0 and 2")
        if self.max_threshold < self.threshold:
            raise ConfigError(
                f"FACEMATCH_MAX_THRESHOLD ({self.max_threshold:g}) is below FACEMATCH_THRESHOLD "
                f"({self.threshold:g}): requests could not use the configured threshold"
            )
        if self.max_sample_faces < 1:
            raise ConfigError("FACEMATCH_MAX_SAMPLE_FACES must be at least 1")
        if self.max_samples < 1:
            raise ConfigError("FACEMATCH_MAX_SAMPLES must be at least 1")
        for variable, value in (
            ("FACEMATCH_IDENTIFY_THRESHOLD", self.identify_threshold),
            ("FACEMATCH_MAX_IDENTIFY_THRESHOLD", self.max_identify_threshold),
        ):
            if value is not None and (not math.isfinite(value) or not 0.0 <= value <= 2.0):
                raise ConfigError(f"{variable} must be a number between 0 and 2")
        if self.identify_limit < self.search_threshold:
            raise ConfigError(
                f"FACEMATCH_MAX_IDENTIFY_THRESHOLD ({self.identify_limit:g}) is below the "
                f"identify threshold ({self.search_threshold:g}): requests could not use it"
            )
        unknown = [rule for rule in self.verify_rules if rule not in gallery_scoring.RULES]
        if not self.verify_rules or unknown:
            raise ConfigError(
                f"FACEMATCH_VERIFY_RULES must list one or more of "
                f"{', '.join(gallery_scoring.RULES)}"
            )

    @classmethod
    def from_settings(
        cls, settings: Settings, calibration: Calibration | None = None
    ) -> DecisionPolicy:
        """The policy ``settings`` configure, with the serving configuration's ``calibration``
        table (None: none). Unset thresholds take the LFW-chosen default, or the one
        ``FACEMATCH_TARGET_FAR`` resolves on the table; an unset maximum is the threshold
        itself. Raises ``ConfigError`` for unusable values."""
        if settings.metric not in scores.METRICS:
            raise ConfigError(f"FACEMATCH_METRIC must be one of {', '.join(scores.METRICS)}")
        if settings.target_far is not None:
            threshold = _configured_far_threshold(settings, calibration)
        elif settings.threshold is None:
            threshold = scores.default_threshold(settings.metric)
        else:
            threshold = settings.threshold
        return cls(
            metric=settings.metric,
            threshold=threshold,
            max_threshold=threshold if settings.max_threshold is None else settings.max_threshold,
            max_sample_faces=settings.max_sample_faces,
            allow_all_faces=settings.allow_all_faces,
            max_samples=settings.max_samples,
            identify_threshold=settings.identify_threshold,
            max_identify_threshold=settings.max_identify_threshold,
            verify_rules=tuple(r.strip() for r in settings.verify_rules.split(",") if r.strip()),
            calibration=calibration,
            target_far=settings.target_far,
        )

    @property
    def search_threshold(self) -> float:
        """The 1:N (identify) threshold in ``metric``'s units."""
        if self.identify_threshold is None:
            default = gallery_scoring.DEFAULT_IDENTIFY_THRESHOLD
            return convert_threshold(default, "cosine", self.metric)
        return self.identify_threshold

    @property
    def identify_limit(self) -> float:
        """The loosest 1:N threshold a request may ask for, in ``metric``'s units."""
        if self.max_identify_threshold is None:
            return self.search_threshold
        return self.max_identify_threshold

    def threshold_for(self, metric: str) -> float:
        """The configured threshold expressed in ``metric``."""
        return convert_threshold(self.threshold, self.metric, metric)

    def limit_for(self, metric: str) -> float:
        """The loosest threshold a request may ask for in ``metric``."""
        return convert_threshold(self.max_threshold, self.metric, metric)

    def for_request(self, form: Mapping[str, str]) -> Decision:
        """The ``Decision`` for a request's form fields ``metric``, ``threshold`` and
        ``sample_faces``. Raises ``InvalidParameter`` (400) for a value that is not one,
        ``ThresholdNotAllowed`` (403) for a threshold looser than the operator allows and
        ``SampleFacesNotAllowed`` (403) for ``all`` when the operator has turned it off."""
        return self._decide(form, self.threshold, self.max_threshold)

    def for_identify(self, form: Mapping[str, str]) -> Decision:
        """Like ``for_request``, for a 1:N search: the default is the identify threshold and a
        request may not loosen it past ``identify_limit`` (403 ``threshold_not_allowed``)."""
        return self._decide(form, self.search_threshold, self.identify_limit)

    def verify_rule(self, form: Mapping[str, str]) -> str:
        """The verify rule a request's ``rule`` field names (absent or empty: the operator's
        default). ``InvalidParameter`` (400) for an unknown rule, ``RuleNotAllowed`` (403) for
        one the operator does not allow."""
        rule = form.get("rule") or self.verify_rules[0]
        if rule not in gallery_scoring.RULES:
            raise InvalidParameter(f"'rule' must be one of {', '.join(gallery_scoring.RULES)}")
        if rule not in self.verify_rules:
            raise RuleNotAllowed(
                f"the rule '{rule}' is turned off on this server; allowed: "
                f"{', '.join(self.verify_rules)}"
            )
        return rule

    def _decide(self, form: Mapping[str, str], threshold: float, maximum: float) -> Decision:
        """The decision for ``form`` under a configured ``threshold`` and loosest ``maximum``
        (both in ``self.metric``'s units)."""
        metric = form.get("metric", self.metric)
        if metric not in scores.METRICS:
            raise InvalidParameter(f"'metric' must be one of {', '.join(scores.METRICS)}")
        mode = form.get("sample_faces", "primary")
        if mode not in SAMPLE_FACES:
            raise InvalidParameter(f"'sample_faces' must be one of {', '.join(SAMPLE_FACES)}")
        raw = form.get("threshold")
        if raw is None or raw == "":
            chosen = convert_threshold(threshold, self.metric, metric)
        else:
            if raw.startswith(FAR_PREFIX):
                chosen = convert_threshold(self._far_threshold(raw), "cosine", metric)
            else:
                chosen = parse_decimal("threshold", raw)
            if chosen > 2.0:
                raise InvalidParameter("'threshold' must be a number between 0 and 2")
            limit = convert_threshold(maximum, self.metric, metric)
            if chosen > limit and not math.isclose(chosen, limit, rel_tol=1e-12):
                raise ThresholdNotAllowed(
                    f"'threshold' may tighten the operator's threshold, not loosen it: the "
                    f"loosest allowed {metric} threshold is {limit:.6g}"
                )
        if mode == "all" and not self.allow_all_faces:
            raise SampleFacesNotAllowed(
                "'sample_faces=all' is turned off on this server (each extra face compared "
                "raises the chance of a false match); send one face or 'primary'"
            )
        bound = self.max_sample_faces if mode == "all" else 1
        return Decision(metric, chosen, mode, bound)

    def _far_threshold(self, raw: str) -> float:
        """The cosine threshold a ``far:RATE`` field asks for on the calibration table:
        ``InvalidParameter`` for a rate that is not one or without a table,
        ``UnreachableTarget`` below the smallest rate the table resolves."""
        rate = parse_decimal("threshold", raw[len(FAR_PREFIX) :])
        if not 0.0 < rate <= 1.0:
            raise InvalidParameter("'threshold=far:RATE' needs a rate above 0 and at most 1")
        if self.calibration is None:
            raise InvalidParameter(
                "'threshold=far:' needs a calibration table, and this server's configuration "
                "has none (see /health)"
            )
        try:
            return self.calibration.threshold_at_far(rate)
        except ValueError as error:
            raise UnreachableTarget(
                f"far:{rate:g} is below what the calibration sample can resolve: {error} "
                f"({self.calibration.pairs['different']} different-person pairs)"
            ) from None


def _configured_far_threshold(settings: Settings, calibration: Calibration | None) -> float:
    """The threshold (in ``settings.metric``) ``FACEMATCH_TARGET_FAR`` resolves on the table;
    ``ConfigError`` when it cannot."""
    rate = settings.target_far
    if settings.threshold is not None:
        raise ConfigError("set FACEMATCH_TARGET_FAR or FACEMATCH_THRESHOLD, not both")
    if not math.isfinite(rate) or not 0.0 < rate <= 1.0:
        raise ConfigError("FACEMATCH_TARGET_FAR must be a rate above 0 and at most 1")
    if calibration is None:
        raise ConfigError(
            "FACEMATCH_TARGET_FAR needs a calibration table for this configuration; build one "
            "with python -m deployment_utils.calibration (see docs/calibration.md)"
        )
    try:
        cosine = calibration.threshold_at_far(rate)
    except ValueError as error:
        raise ConfigError(f"FACEMATCH_TARGET_FAR={rate:g} cannot be resolved: {error}") from None
    return convert_threshold(cosine, "cosine", settings.metric)
