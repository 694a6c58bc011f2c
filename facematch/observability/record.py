"""What one API request did: the record the metrics publisher sends and Prometheus counts.

The routes never touch a record: while a request runs they fill its ``Outcome``
(``outcome``: faces, timings, the decision, what a gallery search found). Once the response is
known, ``request_metrics`` builds one ``RequestRecord`` from that outcome and the status, for a
request to ``/photo_match``, ``/cached_match``, ``/embeddings``, ``/faces`` or a gallery route,
and hands it to the publisher and to the Prometheus metrics. Nothing here holds image data,
embeddings or gallery ids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class FaceSummary:
    """Detection outcome for one input photo."""

    role: str  # "reference" or "sample" or "photo"
    count: int
    probability: float | None = None
    box: list[float] | None = None
    image_width: int | None = None
    image_height: int | None = None


@dataclass
class Latency:
    """Milliseconds spent per stage, as the request's ``Outcome`` adds them up; ``total``
    covers the whole request handler (set when the answer or the record is made)."""

    decode: float = 0.0
    detection: float = 0.0
    embedding: float = 0.0
    scoring: float = 0.0
    total: float = 0.0
    search: float | None = None  # gallery routes: the store's search

    def stages(self) -> dict[str, float]:
        """Each stage the request went through, in the answer's order: the four of every
        route, ``search`` on the gallery routes, and ``total``."""
        done = {"decode": self.decode, "detection": self.detection}
        done.update(embedding=self.embedding, scoring=self.scoring)
        if self.search is not None:
            done["search"] = self.search
        return {**done, "total": self.total}


@dataclass
class GalleryWork:
    """What a gallery request did with its gallery: the faces it holds, how many candidates
    came back and the nearest one's distance (each None when the request did not get that
    far). No ids."""

    size: int | None = None
    candidates: int | None = None
    best_distance: float | None = None


@dataclass
class WatchWork:
    """The camera watcher's counters at a decision (since the watcher started): sampled frames
    it looked at, frames the source dropped to keep up, faces detected, tracks started and
    decisions made."""

    frames: int
    dropped: int
    faces: int
    tracks: int
    decisions: int


@dataclass
class RequestRecord:
    """Everything the metrics message says about one request."""

    endpoint: str
    started: float = field(default_factory=time.time)
    status: int = 200
    error_code: str | None = None
    match: bool | None = None
    distance: float | None = None
    threshold: float | None = None
    metric: str | None = None
    model: str | None = None
    faces: list[FaceSummary] = field(default_factory=list)
    latency: Latency = field(default_factory=Latency)
    gallery: GalleryWork | None = None  # gallery routes only
    watch: WatchWork | None = None  # the camera watcher's decisions only
