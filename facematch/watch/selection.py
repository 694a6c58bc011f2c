"""A track's best frames: each sighting's face is scored by the quality measures
(``decision.quality``) and only the best ``keep`` crops are held (a few 160x160 crops a track,
however long it lasts). Pure: no model.

A face that meets every quality bar beats one that does not; among those, a larger, sharper,
more frontal face is better (``score``). The kept crops are the ones embedded and fused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from facematch.decision.quality import FaceQuality, QualityGate

#: Widths and sharpness past these are as good as it gets (the embedder sees 160 px crops).
FULL_WIDTH_PX = 112.0
FULL_SHARPNESS = 50.0
DEFAULT_GATE = QualityGate()


def score(quality: FaceQuality, gate: QualityGate = DEFAULT_GATE) -> tuple[bool, float]:
    """How good a face is for the decision: (meets every bar of ``gate``, a value in 0..1 that
    grows with width and sharpness and falls as the face turns or tilts away)."""
    turned = math.cos(math.radians(min(90.0, abs(quality.yaw or 0.0))))
    tilted = math.cos(math.radians(min(90.0, abs(quality.pitch or 0.0))))
    size = min(1.0, quality.width_px / FULL_WIDTH_PX)
    sharp = min(1.0, quality.sharpness / FULL_SHARPNESS)
    return not gate.reasons(quality), turned * tilted * size * sharp * quality.probability


@dataclass(frozen=True, eq=False)
class Sighting:
    """One frame's face of a track: the frame's index, the box, the crop the embedder takes
    (3x160x160 float32, standardised), its quality and score."""

    frame: int
    box: tuple[float, float, float, float]
    crop: np.ndarray = field(repr=False)
    quality: FaceQuality
    score: tuple[bool, float]


class BestFrames:
    """The ``keep`` best sightings of one track so far, best first."""

    def __init__(self, keep: int):
        if keep < 1:
            raise ValueError("FACEMATCH_WATCH_KEEP_FRAMES must be at least 1")
        self.keep = keep
        self.kept: list[Sighting] = []

    def offer(self, sighting: Sighting) -> bool:
        """Keep ``sighting`` if it is among the best ``keep`` so far (an earlier one wins a
        tie); True if it was kept."""
        if len(self.kept) == self.keep and sighting.score <= self.kept[-1].score:
            return False
        self.kept.append(sighting)
        self.kept.sort(key=lambda s: s.score, reverse=True)  # stable: earlier first in a tie
        del self.kept[self.keep :]
        return any(s is sighting for s in self.kept)

    @property
    def crops(self) -> list[np.ndarray]:
        return [s.crop for s in self.kept]
