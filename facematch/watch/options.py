"""The watcher's options, frozen and validated, built from ``Settings`` (the ``FACEMATCH_WATCH_*``
variables) and the command line's camera and gallery."""

from __future__ import annotations

import re
from dataclasses import dataclass

from facematch.config import ConfigError, Settings
from facematch.errors import InvalidId
from facematch.gallery.store import check_id
from facematch.watch.tracker import TrackerOptions

#: A camera's name: it is part of MQTT topics and Home Assistant ids.
CAMERA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
LIVE = {"auto": None, "true": True, "false": False}


@dataclass(frozen=True)
class WatchOptions:
    """What one watcher does: its camera and gallery, the tracker, how many best frames a track
    keeps, how many sightings it needs and when an open one is decided (0: only at its end),
    where events go, and the optional Home Assistant discovery, snapshots and Prometheus port."""

    camera: str
    gallery: str
    tracker: TrackerOptions = TrackerOptions()
    keep_frames: int = 5
    min_frames: int = 2
    decide_after: int = 15
    topic: str = "facematch/watch"
    ha_discovery: bool = False
    ha_prefix: str = "homeassistant"
    snapshots: bool = False
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not CAMERA_NAME.fullmatch(self.camera):
            raise ConfigError("--camera must be 1 to 64 letters, digits, '_' or '-'")
        try:
            check_id("gallery", self.gallery)
        except InvalidId as error:
            raise ConfigError(f"--gallery: {error.message}") from None
        if self.keep_frames < 1:
            raise ConfigError("FACEMATCH_WATCH_KEEP_FRAMES must be at least 1")
        if self.min_frames < 1:
            raise ConfigError("FACEMATCH_WATCH_MIN_FRAMES must be at least 1")
        if self.decide_after < 0:
            raise ConfigError("FACEMATCH_WATCH_DECIDE_AFTER must be 0 (at a track's end) or more")
        for variable, topic in (
            ("FACEMATCH_WATCH_TOPIC", self.topic),
            ("FACEMATCH_WATCH_HA_PREFIX", self.ha_prefix),
        ):
            if not topic or any(c in topic for c in "#+\0") or topic.endswith("/"):
                raise ConfigError(f"{variable} must be an MQTT topic without wildcards")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("FACEMATCH_WATCH_METRICS_PORT must be 0 (off) to 65535")

    @classmethod
    def from_settings(cls, settings: Settings, camera: str, gallery: str) -> WatchOptions:
        """The options ``settings`` configure for ``camera`` watching for ``gallery``'s people
        (``ConfigError`` naming the variable for an unusable value)."""
        try:
            tracker = TrackerOptions(settings.watch_iou, settings.watch_max_misses)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return cls(
            camera=camera,
            gallery=gallery,
            tracker=tracker,
            keep_frames=settings.watch_keep_frames,
            min_frames=settings.watch_min_frames,
            decide_after=settings.watch_decide_after,
            topic=settings.watch_topic,
            ha_discovery=settings.watch_ha_discovery,
            ha_prefix=settings.watch_ha_prefix,
            snapshots=settings.watch_snapshots,
            metrics_port=settings.watch_metrics_port,
            metrics_host=settings.watch_metrics_host,
        )

    @property
    def event_topic(self) -> str:
        return f"{self.topic}/{self.camera}"

    @property
    def snapshot_topic(self) -> str:
        return f"{self.topic}/{self.camera}/snapshot"


def live_setting(settings: Settings) -> bool | None:
    """``FACEMATCH_WATCH_LIVE`` as the source takes it: None (guess from the URL), True, False."""
    value = settings.watch_live.strip().lower()
    if value not in LIVE:
        raise ConfigError("FACEMATCH_WATCH_LIVE must be auto, true or false")
    return LIVE[value]
