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
- Numbers are ASCII decimals only (``0.5``, ``1``, ``.5``): no sign, exponent, whitespace,
  ``nan``/``inf`` or non-ASCII digits (Python's ``float`` accepts ``"١"`` and ``"１"``).

Pure: no Flask, no model; ``for_request`` takes a mapping of form fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import score_service
from config import ConfigError, Settings
from errors import InvalidParameter, SampleFacesNotAllowed, ThresholdNotAllowed

SAMPLE_FACES = ("primary", "all")
#: An ASCII decimal: digits with an optional fraction, or a bare fraction; nothing else.
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_MAX_NUMBER_LENGTH = 32


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
    threshold: float = score_service.DEFAULT_THRESHOLDS["cosine"]
    max_threshold: float = score_service.DEFAULT_THRESHOLDS["cosine"]
    max_sample_faces: int = 10
    allow_all_faces: bool = False

    def __post_init__(self) -> None:
        if self.metric not in score_service.METRICS:
            raise ConfigError(f"FACEMATCH_METRIC must be one of {', '.join(score_service.METRICS)}")
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

    @classmethod
    def from_settings(cls, settings: Settings) -> DecisionPolicy:
        """The policy ``settings`` configure; unset thresholds take the LFW-chosen default and
        an unset maximum is the threshold itself. Raises ``ConfigError`` for unusable values."""
        if settings.metric not in score_service.METRICS:
            raise ConfigError(f"FACEMATCH_METRIC must be one of {', '.join(score_service.METRICS)}")
        threshold = (
            score_service.default_threshold(settings.metric)
            if settings.threshold is None
            else settings.threshold
        )
        return cls(
            metric=settings.metric,
            threshold=threshold,
            max_threshold=threshold if settings.max_threshold is None else settings.max_threshold,
            max_sample_faces=settings.max_sample_faces,
            allow_all_faces=settings.allow_all_faces,
        )

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
        metric = form.get("metric", self.metric)
        if metric not in score_service.METRICS:
            raise InvalidParameter(f"'metric' must be one of {', '.join(score_service.METRICS)}")
        mode = form.get("sample_faces", "primary")
        if mode not in SAMPLE_FACES:
            raise InvalidParameter(f"'sample_faces' must be one of {', '.join(SAMPLE_FACES)}")
        raw = form.get("threshold")
        if raw is None or raw == "":
            threshold = self.threshold_for(metric)
        else:
            threshold = parse_decimal("threshold", raw)
            if threshold > 2.0:
                raise InvalidParameter("'threshold' must be a number between 0 and 2")
            limit = self.limit_for(metric)
            if threshold > limit:
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
        return Decision(metric, threshold, mode, bound)
