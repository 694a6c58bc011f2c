"""Distances between embeddings and the match decision: pure functions, no model.

``distance(a, b, metric)`` (cosine by default, or euclidean between the unit vectors) and
``decide(a, b, threshold, metric)``, which says ``match`` when the distance is at most the
threshold (``MatchResult``); ``DEFAULT_THRESHOLDS`` were chosen on LFW. They live in
``facematch.decision.scores``.
"""

from facematch.decision.scores import (
    DEFAULT_THRESHOLDS,
    METRICS,
    MatchResult,
    cosine_distance,
    decide,
    default_threshold,
    distance,
    euclidean_distance,
    normalize,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "METRICS",
    "MatchResult",
    "cosine_distance",
    "decide",
    "default_threshold",
    "distance",
    "euclidean_distance",
    "normalize",
]
