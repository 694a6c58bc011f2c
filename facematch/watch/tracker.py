"""Following faces across sampled frames: a greedy IoU tracker, pure (no model, no clock).

Each frame's boxes are matched to the open tracks by overlap (intersection over union), the
largest overlaps first; a box that overlaps no open track by at least ``iou`` starts a new
track. A track that goes ``max_misses`` sampled frames without a box ends and is handed back,
so the watcher can decide it. Sampled frames the source dropped while the watcher was busy count
as frames without it, so a track ends after the same time however far behind the watcher is.
Enough for people walking past a fixed camera at a few frames a second; faces that cross each
other may swap tracks (then both are decided on their frames).
"""

from __future__ import annotations

from dataclasses import dataclass

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels


@dataclass(frozen=True)
class TrackerOptions:
    """``iou``: the least overlap that continues a track; ``max_misses``: sampled frames a
    track may go unseen before it ends."""

    iou: float = 0.3
    max_misses: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.iou <= 1.0:
            raise ValueError("FACEMATCH_WATCH_IOU must be above 0 and at most 1")
        if self.max_misses < 0:
            raise ValueError("FACEMATCH_WATCH_MAX_MISSES must be 0 or more")


@dataclass
class Track:
    """One face followed across frames: its id (1, 2, ... in order of first sight), the frame
    indexes of its first and latest sighting, its latest box, how many frames saw it and how
    many sampled frames in a row have missed it since."""

    id: int
    first_frame: int
    last_frame: int
    box: Box
    sightings: int = 1
    misses: int = 0


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap or are empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Step:
    """What one frame did: the track of each box (in the boxes' order) and the tracks that
    ended with it."""

    assigned: tuple[Track, ...]
    ended: tuple[Track, ...]


class IouTracker:
    """The open tracks, updated one sampled frame at a time."""

    def __init__(self, options: TrackerOptions = TrackerOptions()):
        self.options = options
        self.open: dict[int, Track] = {}
        self.started = 0

    def update(self, boxes: list[Box], frame: int, elapsed: int = 1) -> Step:
        """Match ``boxes`` (one sampled frame's faces, frame index ``frame``) to the open
        tracks; start tracks for the unmatched boxes; end the tracks missed too long.
        ``elapsed``: sampled frames since the last update, this one and dropped ones included;
        each is a miss for a track not seen in this frame."""
        pairs = sorted(
            (
                (iou(track.box, box), track.id, i)
                for track in self.open.values()
                for i, box in enumerate(boxes)
            ),
            key=lambda p: (-p[0], p[1], p[2]),
        )
        owner: dict[int, Track] = {}
        taken: set[int] = set()
        for overlap, track_id, i in pairs:
            if overlap < self.options.iou:
                break
            if i in owner or track_id in taken:
                continue
            track = self.open[track_id]
            track.box, track.last_frame, track.misses = boxes[i], frame, 0
            track.sightings += 1
            owner[i] = track
            taken.add(track_id)
        for i, box in enumerate(boxes):
            if i not in owner:
                self.started += 1
                owner[i] = self.open[self.started] = Track(self.started, frame, frame, box)
                taken.add(self.started)
        ended = []
        for track in list(self.open.values()):
            if track.id not in taken:
                track.misses += elapsed
                if track.misses > self.options.max_misses:
                    ended.append(self.open.pop(track.id))
        return Step(tuple(owner[i] for i in range(len(boxes))), tuple(ended))

    def close(self) -> tuple[Track, ...]:
        """End every open track (the source has ended or the watcher stops), oldest first."""
        ended = tuple(sorted(self.open.values(), key=lambda t: t.id))
        self.open.clear()
        return ended
