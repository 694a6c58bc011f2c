"""Prometheus metrics as a Flask extension: ``init_app(app, settings, build)``, ``GET /metrics``.

``request_metrics`` hands every recorded request's ``RequestRecord`` (the one the MQTT message is
built from) to ``PrometheusMetrics.observe``; nothing else writes these metrics. Under Gunicorn
(``PROMETHEUS_MULTIPROC_DIR`` set by gunicorn.conf.py before prometheus_client is imported) each
worker writes its values to its own files in that directory and ``/metrics`` adds up every
worker's, the dead ones' counters and histograms included (``api.gunicorn_hooks.child_exit``);
without the variable (tests, other WSGI servers) one in-process registry per app is used.

Gauges under multiprocess mode: the MQTT publisher's queue and connected workers are
``livesum`` (summed over live workers), the gallery size is ``livemostrecent`` (the value set by
the latest gallery request of a live worker), the build information ``livemax`` (1).

``/metrics`` needs ``FACEMATCH_METRICS_TOKEN`` as a bearer token when it is set, else an API key
when API keys are on, else it is open (``deploy/nginx/facematch.conf`` answers 404 for it).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from facematch.config import ConfigError, Settings
from facematch.engine.options import EngineOptions
from facematch.errors import Unauthorized
from facematch.keys import MIN_KEY_LENGTH, KeyRing
from facematch.observability.record import RequestRecord

bp = Blueprint("prometheus", __name__)
#: The endpoint of ``GET /metrics``: exempt from the API-key check, which it does itself.
ENDPOINT = "prometheus.metrics"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DISTANCE_BUCKETS = (*(round(0.05 * i, 2) for i in range(1, 21)), 1.25, 1.5, 2.0)
FACE_COUNT_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)
#: Publisher counters exported as Prometheus counters (``facematch_mqtt_<name>_total``).
PUBLISHER_COUNTERS = ("sent", "dropped", "errors")
OPENAPI_PATH = Path(__file__).resolve().parents[2] / "openapi.json"
_TOKEN_MESSAGE = "a valid metrics token is required (Authorization: Bearer <token>)"
_KEY_MESSAGE = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"


@dataclass(frozen=True)
class BuildInfo:
    """What answers: the API version (openapi.json), the model, where each network runs."""

    version: str
    model: str
    embed_backend: str
    detect_backend: str
    device: str

    @classmethod
    def of(cls, options: EngineOptions) -> BuildInfo:
        """The build information of an engine built with ``options``."""
        document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
        return cls(
            version=document["info"]["version"],
            model=options.model,
            embed_backend=options.embed_backend,
            detect_backend=options.detect_backend,
            device=options.device,
        )


def multiprocess_dir() -> str | None:
    """The directory shared by the Gunicorn workers, or None for a single process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PrometheusMetrics:
    """The metric objects of one app and what fills them; ``observe`` per recorded request."""

    def __init__(self, build: BuildInfo):
        self.shared_dir = multiprocess_dir()
        # Multiprocess mode: values live in the directory's files, collected at scrape time.
        self.registry = None if self.shared_dir else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "facematch_requests",
            "Recorded API requests by route pattern and HTTP status",
            ["route", "status"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "facematch_stage_duration_seconds",
            "Time per request stage (decode, detection, embedding, scoring, search, total); "
            "a stage that did not run is not observed",
            ["route", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.decisions = Counter(
            "facematch_decisions",
            "Decisions by route: match or no_match",
            ["route", "decision"],
            registry=r,
        )
        self.distance = Histogram(
            "facematch_distance",
            "Distance of each deciding comparison",
            ["route", "metric"],
            buckets=DISTANCE_BUCKETS,
            registry=r,
        )
        self.faces = Histogram(
            "facematch_faces_per_photo",
            "Faces detected per uploaded photo, by its role",
            ["route", "role"],
            buckets=FACE_COUNT_BUCKETS,
            registry=r,
        )
        self.gallery_faces = Gauge(
            "facematch_gallery_faces",
            "Faces in the gallery the latest verify or identify request searched",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.mqtt_queued = Gauge(
            "facematch_mqtt_queued",
            "MQTT metrics messages held by the publishers (queued or unacknowledged)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.mqtt_connected = Gauge(
            "facematch_mqtt_connected_workers",
            "Workers whose MQTT publisher is connected to the broker",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.mqtt_counters = {
            name: Counter(f"facematch_mqtt_{name}", f"MQTT metrics messages {name}", registry=r)
            for name in PUBLISHER_COUNTERS
        }
        self.build_info = Gauge(
            "facematch_build_info",
            "Always 1: the version, model and backends that answer",
            list(vars(build)),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(**vars(build)).set(1)
        self._lock = threading.Lock()
        self._seen_pid = os.getpid()
        self._seen = dict.fromkeys(PUBLISHER_COUNTERS, 0)

    def observe(self, record: RequestRecord) -> None:
        """Count one recorded request and observe what it did (its route is a rule pattern)."""
        route = record.endpoint
        self.requests.labels(route, str(record.status)).inc()
        latency = record.latency
        stages = {
            "decode": latency.decode,
            "detection": latency.detection,
            "embedding": latency.embedding,
            "scoring": latency.scoring,
            "search": latency.search,
        }
        for stage, ms in stages.items():
            if ms:  # None or 0.0: the stage did not run
                self.stage_seconds.labels(route, stage).observe(ms / 1000)
        self.stage_seconds.labels(route, "total").observe(latency.total / 1000)
        if record.match is not None:
            self.decisions.labels(route, "match" if record.match else "no_match").inc()
        if record.distance is not None:
            self.distance.labels(route, record.metric or "").observe(record.distance)
        for face in record.faces:
            self.faces.labels(route, face.role).observe(face.count)
        if record.gallery is not None and record.gallery.size is not None:
            self.gallery_faces.set(record.gallery.size)

    def observe_publisher(self, stats: dict[str, Any]) -> None:
        """Bring this worker's MQTT gauges and counters up to its publisher's ``stats()``."""
        if not stats.get("enabled"):
            return
        with self._lock:
            if self._seen_pid != os.getpid():  # a forked worker: its publisher starts at 0
                self._seen_pid = os.getpid()
                self._seen = dict.fromkeys(PUBLISHER_COUNTERS, 0)
            for name, counter in self.mqtt_counters.items():
                grown = stats[name] - self._seen[name]
                if grown > 0:
                    counter.inc(grown)
                    self._seen[name] = stats[name]
            self.mqtt_queued.set(stats["queued"])
            self.mqtt_connected.set(1 if stats["connected"] else 0)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (all workers' in multiprocess mode)."""
        registry = self.registry
        if registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.shared_dir)
        return generate_latest(registry)


class MetricsAccess:
    """Who may read ``/metrics``: the token's holder, else an API key's, else anyone."""

    def __init__(self, token: str, api_keys: KeyRing):
        if token and len(token) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"FACEMATCH_METRICS_TOKEN is shorter than {MIN_KEY_LENGTH} characters"
            )
        self._check = KeyRing.of_keys([token]) if token else api_keys
        self.by_token = bool(token)

    @property
    def open(self) -> bool:
        return not self._check.enabled

    def check(self, headers) -> None:
        """Raise ``Unauthorized`` (401) unless ``headers`` carry the token (or an API key)."""
        if self.open or self._check.is_valid(KeyRing.presented_key(headers)):
            return
        raise Unauthorized(_TOKEN_MESSAGE if self.by_token else _KEY_MESSAGE)


def init_app(app: Flask, settings: Settings, build: BuildInfo, keys: KeyRing) -> PrometheusMetrics:
    """Register ``GET /metrics`` on ``app`` and return the ``PrometheusMetrics`` to fill (also
    ``app.extensions["facematch_prometheus"]``). ``ConfigError`` for a short token or unusable
    API keys."""
    metrics = PrometheusMetrics(build)
    access = MetricsAccess(settings.metrics_token, keys)
    app.extensions["facematch_prometheus"] = (metrics, access)
    app.register_blueprint(bp)
    return metrics


@bp.get("/metrics")
def metrics():
    """The metrics in the Prometheus text format, to a holder of the token or an API key."""
    prometheus, access = current_app.extensions["facematch_prometheus"]
    access.check(request.headers)
    publisher = current_app.extensions.get("facematch_metrics")
    if publisher is not None:
        prometheus.observe_publisher(publisher.stats())
    return Response(prometheus.exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
