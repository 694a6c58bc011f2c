"""A track's decision: its kept crops embedded, fused into one vector and identified against the
gallery at the operator's calibrated 1:N threshold, with the identify route's own code.

The threshold is the policy's identify threshold (``FACEMATCH_IDENTIFY_THRESHOLD``, or the
LFW-measured default), in cosine as gallery distances are; a watcher never loosens it.
``GalleryAccess.identify`` ranks the subjects, decides (the nearest subject if within the
threshold, else nobody: an unknown is never the nearest enrolled person) and writes the
decision to the gallery's audit trail with the camera as the actor (``camera:<name>``), as
the route does with the API key's id. Fusion is ``decision.fusion.fuse`` (the normalised mean
of the unit embeddings) of the crops within the operator's verify threshold of the track's best
one: where the tracker joined two people into one track, the decision is the best frame's
person's rather than an average of two people (the API refuses such a burst with 422; a camera
cannot be asked again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from facematch.config import Settings
from facematch.decision import calibration
from facematch.decision.calibration import Calibration
from facematch.decision.fusion import fuse, near
from facematch.decision.policy import DecisionPolicy
from facematch.engine.engine import FaceEngine
from facematch.gallery.service import GalleryAccess


@dataclass(frozen=True)
class TrackDecision:
    """Who a track is (``subject``; None: nobody enrolled), the nearest subject's cosine
    distance (None for an empty gallery), the threshold, the calibration at that distance
    (None without a table), the crops fused, those left out as another person's, and the
    milliseconds spent embedding and in the gallery (the audit event's write included)."""

    subject: str | None
    distance: float | None
    threshold: float
    calibration: dict | None
    used: int
    left_out: int
    embedding_ms: float
    search_ms: float


def actor_of(camera: str) -> str:
    """The audit trail's actor for a camera's decisions."""
    return f"camera:{camera}"


class Decider:
    """Decides tracks of one camera against one gallery."""

    def __init__(
        self,
        engine: FaceEngine,
        access: GalleryAccess,
        gallery: str,
        camera: str,
        threshold: float,
        same_person: float,
        table: Calibration | None = None,
    ):
        self.engine = engine
        self.access = access
        self.gallery = gallery
        self.actor = actor_of(camera)
        self.threshold = threshold
        self.same_person = same_person
        self.table = table

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: FaceEngine, gallery: str, camera: str
    ) -> Decider:
        """The decider ``settings`` configure: their gallery store, the policy's 1:N and
        verify thresholds in cosine and the calibration table (``ConfigError`` for unusable
        settings)."""
        table = calibration.for_settings(settings, engine.options)
        policy = DecisionPolicy.from_settings(settings, table)
        threshold = policy.for_identify({"metric": "cosine"}).threshold
        access = GalleryAccess.from_settings(settings)
        return cls(
            engine, access, gallery, camera, threshold, policy.threshold_for("cosine"), table
        )

    def decide(self, crops: list[np.ndarray]) -> TrackDecision:
        """Embed ``crops`` (one track's best, best first), fuse those of the best one's person
        and identify the fused vector; the decision is in the audit trail before it is returned
        (``GalleryUnavailable`` if the database is away)."""
        embedded = self.engine.embed(crops)
        same = near(embedded.vectors, 0, self.same_person)
        vector = fuse(embedded.vectors[same]).astype(np.float32)
        start = time.perf_counter()
        searched = self.access.identify(
            self.gallery, vector, self.engine.model_name, self.threshold, 1, self.actor
        )
        search_ms = (time.perf_counter() - start) * 1000
        found = searched.result
        nearest = found.candidates[0].distance if found.candidates else None
        described = None if self.table is None else self.table.describe(nearest, self.threshold)
        return TrackDecision(
            found.identified,
            nearest,
            self.threshold,
            described,
            len(same),
            len(crops) - len(same),
            embedded.embedding_ms,
            search_ms,
        )
