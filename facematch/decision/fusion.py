"""Fusion: one decision embedding from several embeddings of one person (a kiosk's burst of
samples, a camera track's best frames). Pure functions, no model.

``fuse`` is the normalised mean of the unit embeddings; ``spread`` is the largest pairwise
distance, which callers compare with the verify threshold so that a burst of strangers is refused
rather than averaged into somebody else; ``near`` picks the rows within that threshold of one row
(a camera track's best frame), for a caller that cannot refuse.
"""

from __future__ import annotations

import numpy as np

from facematch.decision.scores import distance


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """``embeddings`` (n, d) as float64 rows of unit L2 norm."""
    rows = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fuse(embeddings: np.ndarray) -> np.ndarray:
    """The unit vector of the mean of the unit embeddings (one row is returned unchanged)."""
    mean = unit_rows(embeddings).mean(axis=0)
    return mean / np.linalg.norm(mean)


def spread(embeddings: np.ndarray, metric: str = "cosine") -> float:
    """The largest distance between any two of ``embeddings`` under ``metric`` (0 for one)."""
    rows = unit_rows(embeddings)
    pairs = ((i, j) for i in range(len(rows)) for j in range(i + 1, len(rows)))
    return max((distance(rows[i], rows[j], metric) for i, j in pairs), default=0.0)


def near(
    embeddings: np.ndarray, anchor: int, threshold: float, metric: str = "cosine"
) -> list[int]:
    """The indexes of the rows of ``embeddings`` within ``threshold`` of row ``anchor`` under
    ``metric`` (the anchor first, then in order)."""
    rows = unit_rows(embeddings)
    others = (i for i in range(len(rows)) if i != anchor)
    return [anchor, *(i for i in others if distance(rows[anchor], rows[i], metric) <= threshold)]
