"""Settings for facematch: the one place that reads environment variables.

Every variable is prefixed ``FACEMATCH_``; the README's configuration table lists each with its
default. ``Settings.from_env()`` reads them; tests build ``Settings`` directly or pass overrides.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "FACEMATCH_"


class ConfigError(ValueError):
    """A FACEMATCH_ variable holds a value that cannot be used."""


def _default_data_dir() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "facematch")


@dataclass(frozen=True)
class Settings:
    """Typed configuration; field ``name`` is read from ``FACEMATCH_NAME`` (upper case)."""

    # Serving (gunicorn.conf.py)
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = 2
    threads: int = 2
    timeout: int = 120
    preload: bool = True
    log_level: str = "info"
    # Slow and idle clients when Gunicorn is reached directly (deploy/nginx/ is the real answer)
    keepalive: int = 2
    worker_connections: int = 100
    # Gunicorn's control socket (gunicornc): off unless a path is given, one per instance
    control_socket: str = ""
    # MiB a worker may grow above its floor before it gives its free heap back once idle
    # (api/heap_trim.py); 0: never
    heap_trim_mb: int = 96

    # Model and engine
    model: str = "casia-webface"
    weights: str = ""
    data_dir: str = field(default_factory=_default_data_dir)
    device: str = "auto"
    torch_threads: int = 0
    margin: int = 32
    face_selection: str = "center_weighted_size"
    detect_max_side: int = 640
    # int8 embedder + mirrored crop: View 1's paired comparison (docs/accuracy.md) and less
    # embedding work than one float32 crop
    flip_embeddings: bool = True
    embed_backend: str = "onnx-int8"
    detect_backend: str = "onnx"
    min_face_size: int = 40
    center_embeddings: bool = True
    align_faces: bool = False
    # Decode a JPEG of at least 4x FACEMATCH_DETECT_MAX_SIDE at 1/4 or 1/8 of its size (faces
    # too small there are cut from a finer decode); LFW View 1 on 12 MP photos: as a full decode
    reduced_decode: bool = True

    # Decision
    threshold: float | None = None
    metric: str = "cosine"
    # Decision policy (decision/policy.py): a request may tighten, never loosen
    max_threshold: float | None = None  # loosest threshold a request may ask; None: threshold
    max_sample_faces: int = 10  # sample faces embedded and compared at most (best-ranked)
    allow_all_faces: bool = False  # whether a request may ask for sample_faces=all
    # sample photos of one person a burst may send (fused: decision/fusion.py; docs/api.md)
    max_samples: int = 5

    # Calibration and quality (decision/calibration.py, decision/quality.py)
    target_far: float | None = None  # a false-accept rate that sets the threshold (LFW table)
    calibration_dir: str = ""  # folder of calibration tables; empty: the shipped model_data/
    quality: str = "off"  # the face quality gate: off, warn (list what is low) or reject (422)

    # Input limits
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000

    # Galleries (gallery/store.py): enrolled subjects and their embeddings
    gallery_url: str = ""  # sqlite:///PATH or postgresql://...; empty: DATA_DIR/gallery.db
    gallery_max_faces: int = 1_000_000  # faces one gallery may hold
    gallery_max_subject_faces: int = 100  # faces one subject may hold
    # Gallery routes (api/gallery_routes.py) and their decision policy (decision/policy.py)
    identify_threshold: float | None = None  # 1:N threshold (FACEMATCH_METRIC); None: 0.3458 cos
    max_identify_threshold: float | None = None  # loosest 1:N a request may ask; None: the above
    verify_rules: str = "centroid"  # verify rules a request may choose; the first: default
    gallery_retry_after: int = 5  # s: a 503's Retry-After; a worker retries a down db after it
    audit_days: int = 365  # days the gallery audit trail keeps an event (gallery/audit.py)

    # PostgreSQL's HNSW search: candidates visited per query (recall against speed, 1..1000)
    gallery_ef_search: int = 100

    # Metrics over MQTT (off when mqtt_host is empty)
    node: str = field(default_factory=socket.gethostname)
    mqtt_host: str = ""
    mqtt_port: int = 1883
    mqtt_username: str = ""
    mqtt_password: str = ""
    mqtt_ca_file: str = ""
    mqtt_topic: str = "facematch/metrics"
    mqtt_qos: int = 1
    mqtt_client_id: str = ""
    mqtt_queue_size: int = 1000

    # Bridge into InfluxDB
    influx_url: str = ""
    influx_token: str = ""
    influx_org: str = "facematch"
    influx_bucket: str = "facematch"
    influx_measurement: str = "facematch"
    influx_batch_size: int = 100
    influx_flush_interval_ms: int = 1000

    # Prometheus (observability/prometheus.py: GET /metrics; api/gunicorn_hooks.py: the workers'
    # files)
    metrics_token: str = ""  # bearer token /metrics needs; empty: an API key, if keys are on
    prometheus_dir: str = ""  # where each start makes its fresh directory; empty: system temp

    # Security
    api_keys: str = ""  # the simple mode: every key holds every role on every gallery
    api_keys_file: str = ""
    keys_file: str = ""  # TOML: keys with roles and gallery scopes (facematch/keys.py)
    signing_keys: str = ""

    # The camera watcher (python -m facematch.watch; docs/watch.md)
    watch_sample_fps: float = 5.0  # frames a second taken from the source; more are dropped
    watch_live: str = "auto"  # auto (guessed from the URL), true (a camera), false (a file)
    watch_reopen_initial_s: float = 0.5  # first wait before a dropped source is reopened
    watch_reopen_max_s: float = 30.0  # the longest wait between reopen attempts (doubling)
    watch_open_timeout_s: float = 10.0  # how long opening or reading a source may stall
    watch_iou: float = 0.3  # least box overlap (IoU) that continues a track
    watch_max_misses: int = 3  # sampled frames a track may go unseen before it ends
    watch_keep_frames: int = 5  # a track's best frames kept, embedded and fused
    watch_min_frames: int = 2  # sightings a track needs to be decided (fewer: ignored)
    watch_decide_after: int = 15  # sightings after which an open track is decided; 0: at its end
    watch_topic: str = "facematch/watch"  # events go to <topic>/<camera>
    watch_ha_discovery: bool = False  # Home Assistant MQTT discovery: a sensor per camera
    watch_ha_prefix: str = "homeassistant"  # Home Assistant's discovery prefix
    watch_snapshots: bool = False  # publish each decided face's crop (JPEG) to <topic>/snapshot
    watch_metrics_port: int = 0  # Prometheus text on this port (0: off)
    watch_metrics_host: str = "127.0.0.1"  # the address the Prometheus port listens on

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from ``FACEMATCH_*`` variables, then apply keyword overrides."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if not raw:
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def mqtt_enabled(self) -> bool:
        return bool(self.mqtt_host)


def _parse(name: str, type_name: str, raw: str):
    """Convert one variable's text to the field's type, or raise ConfigError naming it."""
    var = PREFIX + name.upper()
    raw = raw.strip()
    try:
        if type_name == "bool":
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "float | None":
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {type_name}") from None
