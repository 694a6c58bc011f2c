"""Scoring against a gallery: verify a sample against a subject's several references, and rank
the subjects of a gallery for a sample (1:N, open set). Pure functions on numpy arrays, no model.

Distances are cosine distances ``1 - cos(a, b)`` on unit vectors, as in ``scores``. The
rules and their defaults were measured on LFW with ``python -m benchmarking_utils.gallery_accuracy``
(``docs/results/gallery_rules.json`` and ``docs/results/gallery_identify.json``):

* ``nearest``: the closest reference decides (its distance against the threshold);
* ``centroid``: the distance to the normalised mean of the subject's references decides;
* ``knn``: a vote among the ``k`` faces of the whole gallery nearest to the sample (see
  ``knn_match``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facematch.decision import scores

RULES = ("nearest", "centroid", "knn")
# Measured on LFW (540 people enrol 3 images; docs/results/gallery_rules.json): centroid had the
# best balanced accuracy and TAR at FAR 1e-3 on the held-out half, and at the 1:1 threshold
# 0.6397 a FAR of 0.90% against nearest's 1.46% (FRR 0.51% against 0.76%).
DEFAULT_RULE = "centroid"
DEFAULT_KNN_K = 3
# 1:N needs a stricter threshold than 1:1: an unknown face is compared with every subject. At
# 0.3458, 1% of 3,261 unknown LFW faces are falsely identified against 1,650 enrolled people
# (DIR 64.9%; at 0.6397 99.6% would be; docs/results/gallery_identify.json).
DEFAULT_IDENTIFY_THRESHOLD = 0.3458
MAX_TOP_K = 100


@dataclass(frozen=True)
class VerifyRule:
    """How a sample is verified against several references: ``name`` is one of ``RULES``; ``k``
    is the number of gallery neighbours that ``knn`` looks at (ignored by the other rules)."""

    name: str = DEFAULT_RULE
    k: int = DEFAULT_KNN_K

    def __post_init__(self):
        if self.name not in RULES:
            raise ValueError(f"unknown rule {self.name!r}; expected one of {RULES}")
        if not 1 <= self.k <= MAX_TOP_K:
            raise ValueError(f"k must be between 1 and {MAX_TOP_K}, not {self.k}")


@dataclass(frozen=True)
class Neighbour:
    """One face of the gallery near the sample: whose it is and its distance to the sample."""

    subject: str
    distance: float


@dataclass(frozen=True)
class VerifyResult:
    """The decision against one subject's references.

    ``distance`` is the rule's distance: the nearest reference's (``nearest`` and ``knn``) or the
    centroid's (``centroid``). For ``knn``, ``votes`` is how many of the ``k`` nearest gallery
    faces within the threshold are the subject's and ``voters`` how many are within it at all;
    both are None for the other rules."""

    match: bool
    distance: float
    threshold: float
    rule: str
    references: int
    votes: int | None = None
    voters: int | None = None


@dataclass(frozen=True)
class Candidate:
    """A subject ranked for a sample: its nearest face's distance, and whether that is within
    the threshold."""

    subject: str
    distance: float
    match: bool


@dataclass(frozen=True)
class Identification:
    """The answer of a 1:N search: the best candidate's subject if it matches, else None (the
    sample may be nobody in the gallery); the candidates, nearest first, still come back."""

    identified: str | None
    candidates: tuple[Candidate, ...]
    threshold: float


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Takes an (n, d) array (or one d-vector) and returns it as float64 rows of unit L2 norm."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise ValueError("an embedding of norm zero has no direction")
    return v / norms


def face_distances(sample: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Cosine distance from one sample embedding to each row of ``faces`` (n, d): shape (n,)."""
    faces = unit_rows(faces)
    sample = scores.normalize(sample)
    if faces.shape[1] != sample.shape[0]:
        raise ValueError(f"sample has {sample.shape[0]} dimensions, faces {faces.shape[1]}")
    return 1.0 - faces @ sample


def centroid(references: np.ndarray) -> np.ndarray:
    """The normalised mean of a subject's reference embeddings (each made unit first)."""
    mean = unit_rows(references).mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-9:
        raise ValueError("the references cancel out: their mean has no direction")
    return mean / norm


def knn_match(
    distances: np.ndarray, is_subject: np.ndarray, threshold: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``knn`` vote, vectorised: takes the distances of the sample's k nearest gallery faces
    (``(..., k)``), whether each is the claimed subject's (same shape), and a threshold (a scalar,
    or an array broadcasting against ``distances[..., 0]``); returns (match, votes, voters).

    Only neighbours within the threshold vote (``voters`` of them); ``votes`` of those are the
    subject's. The sample is the subject when it has at least one vote and at least half of the
    voters (a tie goes to the subject): ``votes >= 1 and 2 * votes >= voters``. So a sample
    whose nearest faces all belong to the subject matches, one that is closer to other people
    than to the subject does not, and one near nobody does not."""
    d = np.asarray(distances, dtype=np.float64)
    mine = np.asarray(is_subject, dtype=bool)
    within = d <= np.asarray(threshold, dtype=np.float64)[..., None]
    voters = within.sum(axis=-1)
    votes = (within & mine).sum(axis=-1)
    return (votes >= 1) & (2 * votes >= voters), votes, voters


def verify(
    sample: np.ndarray,
    references: np.ndarray,
    threshold: float,
    rule: VerifyRule = VerifyRule(),
    subject: str | None = None,
    neighbours: Sequence[Neighbour] = (),
) -> VerifyResult:
    """Verify a sample embedding against one subject's reference embeddings (n, d).

    ``knn`` also needs the subject's id and the sample's nearest faces across the whole gallery
    (``neighbours``, any order; the ``rule.k`` nearest are used, ties in the given order).
    Returns a ``VerifyResult``."""
    refs = np.atleast_2d(np.asarray(references))
    if refs.shape[0] == 0:
        raise ValueError("a subject without references cannot be verified")
    nearest = float(face_distances(sample, refs).min())
    if rule.name == "nearest":
        return VerifyResult(nearest <= threshold, nearest, threshold, rule.name, len(refs))
    if rule.name == "centroid":
        d = float(face_distances(sample, centroid(refs)[None])[0])
        return VerifyResult(d <= threshold, d, threshold, rule.name, len(refs))
    if subject is None or not neighbours:
        raise ValueError("the knn rule needs the subject and the gallery's nearest faces")
    chosen = sorted(neighbours, key=lambda n: n.distance)[: rule.k]
    match, votes, voters = knn_match(
        np.array([n.distance for n in chosen]),
        np.array([n.subject == subject for n in chosen]),
        threshold,
    )
    return VerifyResult(
        bool(match), nearest, threshold, rule.name, len(refs), int(votes), int(voters)
    )


def rank_subjects(
    distances: np.ndarray, subjects: Sequence[str], top_k: int
) -> list[tuple[str, float]]:
    """Takes each gallery face's distance to the sample and its subject; returns the ``top_k``
    subjects by their nearest face, as (subject, distance), nearest first (ties by id)."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, not {top_k}")
    d = np.asarray(distances, dtype=np.float64)
    if d.shape != (len(subjects),):
        raise ValueError(f"{d.shape[0] if d.ndim else 0} distances for {len(subjects)} subjects")
    if not len(subjects):
        return []
    names, owner = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    best = np.full(len(names), np.inf)
    np.minimum.at(best, owner, d)
    order = np.lexsort((names, best))[:top_k]
    return [(str(names[i]), float(best[i])) for i in order]


def identify(
    distances: np.ndarray, subjects: Sequence[str], threshold: float, top_k: int = 5
) -> Identification:
    """Open-set identification from each gallery face's distance to the sample and its subject.

    Subjects are ranked by their nearest face; the first ``top_k`` are candidates, each with
    ``match = distance <= threshold``; ``identified`` is the first candidate if it matches, else
    None. Returns an ``Identification``."""
    ranked = rank_subjects(distances, subjects, top_k)
    candidates = tuple(Candidate(s, d, d <= threshold) for s, d in ranked)
    identified = candidates[0].subject if candidates and candidates[0].match else None
    return Identification(identified, candidates, threshold)
