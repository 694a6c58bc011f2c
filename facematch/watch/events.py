"""What the watcher publishes: one JSON event per decision on ``<FACEMATCH_WATCH_TOPIC>/<camera>``,
Home Assistant's discovery message (off by default) and snapshots (off by default).

An event holds the decision (``subject`` or null, the nearest distance, the threshold, the
calibration as the identify route gives it), the track (its id, the sampled frames that saw it
and those fused, its latest box), ``first_seen`` and ``decided_at`` (UTC) and ``latency_ms``
between them. No image and no embedding: a photo leaves the machine only as a snapshot, the
decided face's 160x160 crop as JPEG on ``<topic>/<camera>/snapshot``, when the operator sets
``FACEMATCH_WATCH_SNAPSHOTS``.

Events go through an ``MqttPublisher`` of their own (the metrics publisher's bounded queue and
reconnects) on the ``FACEMATCH_MQTT_*`` broker; without a broker they go nowhere (the audit
trail still has every decision).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facematch.config import Settings
from facematch.observability.message import format_timestamp
from facematch.observability.publisher import MqttPublisher, Outgoing
from facematch.watch.options import WatchOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchEvent:
    """One decision of one track, as published."""

    camera: str
    track: int
    subject: str | None
    distance: float | None
    threshold: float
    calibration: dict | None
    sampled: int  # sampled frames that saw the track
    used: int  # its best frames, fused
    first_seen: float  # seconds since the epoch
    decided_at: float
    box: tuple[float, float, float, float]

    @property
    def latency_ms(self) -> float:
        return (self.decided_at - self.first_seen) * 1000

    def to_json(self) -> dict:
        return {
            "camera": self.camera,
            "track": self.track,
            "subject": self.subject,
            "distance": None if self.distance is None else round(self.distance, 6),
            "threshold": self.threshold,
            "calibration": self.calibration,
            "frames": {"sampled": self.sampled, "used": self.used},
            "first_seen": format_timestamp(self.first_seen),
            "decided_at": format_timestamp(self.decided_at),
            "box": [round(v, 1) for v in self.box],
            "latency_ms": round(self.latency_ms, 1),
        }


def event_message(options: WatchOptions, event: WatchEvent) -> Outgoing:
    payload = json.dumps(event.to_json(), separators=(",", ":"), allow_nan=False)
    return Outgoing(options.event_topic, payload.encode())


def discovery_message(options: WatchOptions) -> Outgoing:
    """Home Assistant's MQTT discovery of a sensor per camera holding the last person seen
    (``unknown`` for someone not enrolled), its event as attributes; retained."""
    unique = f"facematch_{options.camera}_last_person"
    config = {
        "name": "Last person seen",
        "unique_id": unique,
        "state_topic": options.event_topic,
        "value_template": "{{ value_json.subject if value_json.subject else 'unknown' }}",
        "json_attributes_topic": options.event_topic,
        "icon": "mdi:face-recognition",
        "device": {
            "identifiers": [f"facematch_{options.camera}"],
            "name": f"facematch camera {options.camera}",
            "manufacturer": "facematch",
        },
    }
    topic = f"{options.ha_prefix}/sensor/{unique}/config"
    return Outgoing(topic, json.dumps(config, separators=(",", ":")).encode(), True)


def snapshot_jpeg(crop: np.ndarray) -> bytes:
    """A standardised (3, 160, 160) face crop as a JPEG (only sent when snapshots are on)."""
    pixels = np.clip(np.asarray(crop) * 128.0 + 127.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class EventSink:
    """Where one watcher's events go: MQTT when ``FACEMATCH_MQTT_HOST`` is set, else nowhere."""

    def __init__(self, settings: Settings, options: WatchOptions):
        self.options = options
        self.publisher = None
        if settings.mqtt_enabled:
            stem = settings.mqtt_client_id or f"facematch-watch-{settings.node}"
            self.publisher = MqttPublisher(settings, lambda m: m, f"{stem}-{options.camera}")
        else:
            log.warning("FACEMATCH_MQTT_HOST is empty: events are not published")

    def start(self) -> None:
        """Connect; announce the Home Assistant sensor when discovery is on."""
        if self.publisher is None:
            return
        self.publisher.start()
        if self.options.ha_discovery:
            self.publisher.publish(discovery_message(self.options))

    def publish(self, event: WatchEvent, crop: np.ndarray | None = None) -> None:
        """Queue ``event`` (and, with snapshots on, ``crop`` as its snapshot); never blocks."""
        if self.publisher is None:
            return
        self.publisher.publish(event_message(self.options, event))
        if self.options.snapshots and crop is not None:
            self.publisher.publish(Outgoing(self.options.snapshot_topic, snapshot_jpeg(crop)))

    def stats(self) -> dict:
        return {"enabled": False} if self.publisher is None else self.publisher.stats()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued for up to ``timeout`` seconds, then disconnect."""
        if self.publisher is not None:
            self.publisher.close(timeout)
