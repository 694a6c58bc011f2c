"""The watcher's one-way flow for each sampled frame: detect -> track -> select, and for each
track that is due, embed -> fuse -> decide; the caller publishes what comes back.

A track is decided once: when it has been seen ``decide_after`` times (so a person who stays
in view is not kept waiting), or else when it ends (``max_misses`` sampled frames without it),
or when the source ends or the watcher stops (``finish``). A track seen fewer than
``min_frames`` times is dropped undecided (a passing false detection). After its decision a
track is still followed, so the same person is not decided again while in view, but its crops
are let go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facematch.decision.quality import QualityGate, measure
from facematch.engine.engine import FaceEngine
from facematch.errors import GalleryUnavailable
from facematch.watch.decide import Decider
from facematch.watch.events import WatchEvent
from facematch.watch.metrics import DecisionFigures, WatchMetrics
from facematch.watch.options import WatchOptions
from facematch.watch.selection import DEFAULT_GATE, BestFrames, Sighting, score
from facematch.watch.tracker import IouTracker, Track

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decided:
    """A published decision: the event, the best crop (for a snapshot) and the metrics record
    figures."""

    event: WatchEvent
    crop: np.ndarray
    figures: DecisionFigures


class _Open:
    """What the watcher holds for an open track: when it was first seen and its best frames
    (None once decided)."""

    def __init__(self, first_seen: float, keep: int):
        self.first_seen = first_seen
        self.best: BestFrames | None = BestFrames(keep)


class Watcher:
    """Turns sampled frames (``image``: HxWx3 uint8 RGB, ``index``) into decisions."""

    def __init__(
        self,
        options: WatchOptions,
        engine: FaceEngine,
        decider: Decider,
        metrics: WatchMetrics,
        gate: QualityGate = DEFAULT_GATE,
        clock: Callable[[], float] = time.time,
    ):
        self.options = options
        self.engine = engine
        self.decider = decider
        self.metrics = metrics
        self.gate = gate
        self.clock = clock
        self.tracker = IouTracker(options.tracker)
        self._open: dict[int, _Open] = {}

    def see(self, image: np.ndarray, index: int, skipped: int = 0) -> list[Decided]:
        """Take one sampled frame (``skipped``: sampled frames the source dropped since the
        last one); the decisions it brought due, in track order."""
        now = self.clock()
        photo = Image.fromarray(image)
        faces = self.engine.detect(photo).faces
        step = self.tracker.update([face.box for face in faces], index, 1 + skipped)
        self.metrics.add(frames=1, faces=len(faces))
        due: list[Track] = []
        for face, track in zip(faces, step.assigned):
            held = self._open.get(track.id)
            if held is None:
                held = self._open[track.id] = _Open(now, self.options.keep_frames)
                self.metrics.add(tracks=1)
            if held.best is None:
                continue
            quality = measure(photo, face.box, face.landmarks, face.probability)
            rank = score(quality, self.gate)
            held.best.offer(Sighting(index, face.box, face.crop, quality, rank))
            if self.options.decide_after and track.sightings >= self.options.decide_after:
                due.append(track)
        due.extend(step.ended)
        decided = [self._decide(track) for track in sorted(due, key=lambda t: t.id)]
        for track in step.ended:
            self._open.pop(track.id, None)
        return [d for d in decided if d is not None]

    def finish(self) -> list[Decided]:
        """Decide every open track (the source ended or the watcher stops)."""
        decided = [self._decide(track) for track in self.tracker.close()]
        self._open.clear()
        return [d for d in decided if d is not None]

    def _decide(self, track: Track) -> Decided | None:
        held = self._open.get(track.id)
        if held is None or held.best is None:
            return None
        best, held.best = held.best, None  # decided once, whatever happens next
        if track.sightings < self.options.min_frames or not best.kept:
            return None
        try:
            decision = self.decider.decide(best.crops)
        except GalleryUnavailable:
            log.warning("track %d not decided: the gallery database is unavailable", track.id)
            return None
        if decision.left_out:
            log.info(
                "track %d: %d of its %d best frames look like another person than the best one"
                " and were left out (two people in one track?)",
                track.id,
                decision.left_out,
                decision.left_out + decision.used,
            )
        decided_at = self.clock()
        event = WatchEvent(
            camera=self.options.camera,
            track=track.id,
            subject=decision.subject,
            distance=decision.distance,
            threshold=decision.threshold,
            calibration=decision.calibration,
            sampled=track.sightings,
            used=decision.used,
            first_seen=held.first_seen,
            decided_at=decided_at,
            box=track.box,
        )
        top = best.kept[0]
        figures = DecisionFigures(
            identified=decision.subject is not None,
            distance=decision.distance,
            threshold=decision.threshold,
            model=self.engine.model_name,
            used=decision.used,
            probability=top.quality.probability,
            started=held.first_seen,
            latency_ms=event.latency_ms,
            embedding_ms=decision.embedding_ms,
            search_ms=decision.search_ms,
        )
        return Decided(event, top.crop, figures)
