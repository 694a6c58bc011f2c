"""Scoring: distances between embeddings and the match decision. Pure functions, no model.

The default metric is the cosine distance ``1 - cos(a, b)`` (0 = same direction, 2 = opposite);
the euclidean distance between the L2-normalised vectors is offered too. Default thresholds were
chosen on LFW View 1 ``pairsDevTrain.txt`` and checked on ``pairsDevTest.txt`` with
``python -m benchmarking_utils.threshold`` (see the README for the figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("cosine", "euclidean")

# Chosen on LFW DevTrain (max accuracy, midpoint of the best interval) for the default
# pipeline (config.py's engine defaults: CASIA-WebFace weights, margin 32, center_weighted_size,
# int8 embedder with the mirrored crop, centred embeddings: docs/results/threshold.json). On
# unit vectors euclidean = sqrt(2 cosine), so the euclidean threshold is the same boundary.
DEFAULT_THRESHOLDS = {"cosine": 0.6397, "euclidean": 1.1311}


@dataclass(frozen=True)
class MatchResult:
    """The decision for one pair: ``match`` is ``distance <= threshold``."""

    match: bool
    distance: float
    threshold: float
    metric: str


def normalize(vector: np.ndarray) -> np.ndarray:
    """Return ``vector`` scaled to unit L2 norm (float64)."""
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    return v / np.linalg.norm(v)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - cos(a, b)``, in [0, 2]."""
    return float(1.0 - np.dot(normalize(a), normalize(b)))


def euclidean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between the unit vectors of ``a`` and ``b``, in [0, 2]."""
    return float(np.linalg.norm(normalize(a) - normalize(b)))


def distance(a: np.ndarray, b: np.ndarray, metric: str = "cosine") -> float:
    """Distance between two embeddings under ``metric`` (one of ``METRICS``)."""
    if metric == "cosine":
        return cosine_distance(a, b)
    if metric == "euclidean":
        return euclidean_distance(a, b)
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def default_threshold(metric: str = "cosine") -> float:
    """The threshold chosen on LFW DevTrain for ``metric``."""
    return DEFAULT_THRESHOLDS[metric]


def decide(a: np.ndarray, b: np.ndarray, threshold: float, metric: str = "cosine") -> MatchResult:
    """Compare two embeddings: same person when their distance is at most ``threshold``."""
    d = distance(a, b, metric)
    return MatchResult(match=d <= threshold, distance=d, threshold=threshold, metric=metric)
