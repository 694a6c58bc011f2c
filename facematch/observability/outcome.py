"""What one request learned, as typed values: the source of both the response and the metrics.

The routes fill an ``Outcome`` from the engine's results (``PhotoFaces``), the scorer's
(``MatchResult``) and their own timings; the server builds the JSON answer from it, and the
monitoring extension (``request_metrics``) builds the metrics record from the same object, in
one place. So the API's answer never depends on the metrics schema, and a route that is not
recorded works the same. Holds no pixels and no embedding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from facematch.observability.record import GalleryWork, Latency

if TYPE_CHECKING:
    from facematch.decision.policy import Decision
    from facematch.decision.quality import FaceQuality
    from facematch.decision.scores import MatchResult
    from facematch.engine.engine import DetectedFace, PhotoFaces


@dataclass
class InputPhoto:
    """One uploaded photo: its size once decoded, the faces found (None until detected), each
    face's quality (in the faces' order) and what of the primary face is below the bars."""

    width: int
    height: int
    found: PhotoFaces | None = None
    qualities: list[FaceQuality] = field(default_factory=list)
    below_bar: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.found.faces) if self.found is not None else 0

    @property
    def primary(self) -> DetectedFace | None:
        return self.found.primary if self.found is not None else None


@dataclass
class Outcome:
    """Everything a request did so far; errors leave it partly filled."""

    started_at: float = field(default_factory=time.time)  # wall clock, for the metrics message
    started: float = field(default_factory=time.perf_counter)
    photos: dict[str, InputPhoto] = field(default_factory=dict)  # by role, in upload order
    times: Latency = field(default_factory=Latency)  # stage times, the record's spelling
    decision: Decision | None = None
    compared: list[DetectedFace] = field(default_factory=list)  # sample faces, best-ranked first
    results: list[MatchResult] = field(default_factory=list)  # one per compared face
    decided_by: int | None = None  # the index in ``results`` that decides
    error_code: str | None = None
    gallery: GalleryWork | None = None  # gallery routes only

    @property
    def result(self) -> MatchResult | None:
        """The deciding comparison, once scored."""
        return self.results[self.decided_by] if self.decided_by is not None else None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000
