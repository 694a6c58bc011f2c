"""The watcher's metrics: counters (frames, dropped frames, faces, tracks, decisions) and the
decision latency, into the existing MQTT metrics stream and in Prometheus form.

MQTT: each decision is one version-1 metrics message (``observability.message``) on
``FACEMATCH_MQTT_TOPIC``, endpoint ``/watch/<camera>``: ``match`` (someone identified),
``distance``, ``threshold``, ``latency_ms.total`` (first sight to decision), ``embedding`` and
``search``, and the ``watch`` counters at that moment. It goes through the server's own
publisher (bounded queue while the broker is away).

Prometheus: the watcher is a process of its own, so with ``FACEMATCH_WATCH_METRICS_PORT`` set it
serves its own text on that port (``prometheus_client``'s server, its own registry):
``facematch_watch_<counter>_total{camera}`` and ``facematch_watch_decision_latency_seconds``.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

from facematch.observability.message import WATCH_FIELDS
from facematch.observability.record import FaceSummary, GalleryWork, Latency, RequestRecord
from facematch.observability.record import WatchWork as Counts

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)
HELP = {
    "frames": "Sampled frames the watcher looked at",
    "dropped": "Frames the source dropped because the watcher fell behind",
    "faces": "Faces detected",
    "tracks": "Tracks started",
    "decisions": "Tracks decided",
}


@dataclass(frozen=True)
class DecisionFigures:
    """What the metrics say about one decision (no ids: the subject is not in the metrics)."""

    identified: bool
    distance: float | None
    threshold: float
    model: str
    used: int
    probability: float
    started: float  # the track's first sighting, seconds since the epoch
    latency_ms: float
    embedding_ms: float
    search_ms: float


class WatchMetrics:
    """One watcher's counters (thread-safe) and their Prometheus registry."""

    def __init__(self, camera: str):
        self.camera = camera
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(WATCH_FIELDS, 0)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        self.latency = Histogram(
            "facematch_watch_decision_latency_seconds",
            "Seconds from a track's first sighting to its decision",
            ["camera"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def add(self, **counts: int) -> None:
        """Add to counters by name (``frames=1``, ``faces=2``, ...)."""
        with self._lock:
            for name, value in counts.items():
                self._counts[name] += value

    def set_dropped(self, dropped: int) -> None:
        """The source's count of dropped frames (it keeps the running total)."""
        with self._lock:
            self._counts["dropped"] = dropped

    def counts(self) -> Counts:
        with self._lock:
            return Counts(**self._counts)

    def decided(self, figures: DecisionFigures) -> RequestRecord:
        """Count a decision and observe its latency; the metrics message's record for it."""
        self.add(decisions=1)
        self.latency.labels(self.camera).observe(figures.latency_ms / 1000)
        return RequestRecord(
            endpoint=f"/watch/{self.camera}",
            started=figures.started,
            match=figures.identified,
            distance=figures.distance,
            threshold=figures.threshold,
            metric="cosine",
            model=figures.model,
            faces=[FaceSummary("sample", figures.used, figures.probability)],
            latency=Latency(
                embedding=figures.embedding_ms,
                total=figures.latency_ms,
                search=figures.search_ms,
            ),
            gallery=GalleryWork(candidates=int(figures.distance is not None)),
            watch=self.counts(),
        )

    def serve(self, port: int, host: str) -> None:
        """Serve the Prometheus text on ``host:port`` from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)


class _Collector:
    """The counters as Prometheus counters, read when scraped."""

    def __init__(self, metrics: WatchMetrics):
        self.metrics = metrics

    def collect(self):
        for name, value in asdict(self.metrics.counts()).items():
            family = CounterMetricFamily(f"facematch_watch_{name}", HELP[name], labels=["camera"])
            family.add_metric([self.metrics.camera], value)
            yield family
