"""The metrics message (schema version 1) and the InfluxDB point it becomes.

Version 1 grew by optional members only, so every message an older publisher sends still
validates: gallery requests add ``gallery`` (``size``, ``candidates``, ``best_distance``) and
``latency_ms.search``; the camera watcher's decisions (endpoint ``/watch/<camera>``) add
``watch`` (its counters); the 1:1 routes' messages are unchanged. A change that an older bridge's
schema would refuse for the 1:1 routes, or that removes or retypes a member, is a new version.

``build_message`` turns the server's ``RequestRecord`` into the JSON-ready dict that the
publisher sends; ``validate`` checks a decoded message against
``schema/metrics-message.v1.json``; ``to_point`` is what the bridge writes. Keeping the three
together keeps the field names of the message, the database and the dashboards in one place.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from facematch import bounded_json
from facematch.errors import InvalidParameter
from facematch.observability.record import RequestRecord

SCHEMA_VERSION = 1
#: The largest payload the bridge parses (a message is about 1 KB).
MAX_PAYLOAD_BYTES = 64 * 1024
SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "monitoring" / "schema" / "metrics-message.v1.json"
)

#: Tags of every point (always present; ``none`` stands for a missing value).
TAGS = ("node", "endpoint", "model", "status", "match", "error_code")
#: Latency stages, each written as field ``latency_<stage>_ms``.
STAGES = ("decode", "detection", "embedding", "scoring", "total")
#: Optional stages (gallery routes), written as ``latency_<stage>_ms`` when present.
OPTIONAL_STAGES = ("search",)
#: Members of the optional ``gallery`` object, each written as field ``gallery_<name>``.
GALLERY_FIELDS = ("size", "candidates", "best_distance")
#: Members of the optional ``watch`` object (counters), each written as field ``watch_<name>``.
WATCH_FIELDS = ("frames", "dropped", "faces", "tracks", "decisions")
#: Photo roles; each present role gives fields ``faces_<role>``, ``probability_<role>``,
#: ``image_width_<role>`` and ``image_height_<role>``.
ROLES = ("reference", "sample", "photo")
NONE_TAG = "none"


class InvalidMessage(ValueError):
    """A payload that is not a valid version-1 metrics message."""


@dataclass(frozen=True)
class PointData:
    """One point as the bridge writes it: nanosecond time, string tags, numeric fields."""

    time_ns: int
    tags: dict[str, str]
    fields: dict[str, float | int]


def format_timestamp(epoch_seconds: float) -> str:
    """UTC, microsecond precision, ``Z`` suffix: the schema's timestamp format."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch for a schema timestamp (exact to the microsecond)."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    whole = int(moment.replace(microsecond=0).timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1000


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def build_message(
    record: RequestRecord, node: str, pid: int | None = None, host: str | None = None
) -> dict[str, Any]:
    """The version-1 message for one request record."""
    message = {
        "schema_version": SCHEMA_VERSION,
        "id": uuid.uuid4().hex,
        "timestamp": format_timestamp(record.started),
        "node": node or socket.gethostname(),
        "host": host or socket.gethostname(),
        "pid": pid or os.getpid(),
        "endpoint": record.endpoint,
        "status": int(record.status),
        "error_code": record.error_code,
        "match": None if record.match is None else bool(record.match),
        "distance": _number(record.distance),
        "threshold": _number(record.threshold),
        "metric": record.metric,
        "model": record.model,
        "faces": [
            {
                "role": face.role,
                "count": int(face.count),
                "probability": _number(face.probability),
                "image_width": face.image_width,
                "image_height": face.image_height,
            }
            for face in record.faces
        ],
        "latency_ms": {stage: float(getattr(record.latency, stage)) for stage in STAGES},
    }
    for stage in OPTIONAL_STAGES:
        value = getattr(record.latency, stage)
        if value is not None:
            message["latency_ms"][stage] = float(value)
    if record.gallery is not None:
        message["gallery"] = {
            "size": record.gallery.size,
            "candidates": record.gallery.candidates,
            "best_distance": _number(record.gallery.best_distance),
        }
    if record.watch is not None:
        message["watch"] = {name: int(getattr(record.watch, name)) for name in WATCH_FIELDS}
    return message


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema(), format_checker=cls.FORMAT_CHECKER)


def validate(message: Any) -> None:
    """Raise ``InvalidMessage`` naming the first problem when ``message`` breaks the schema."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(message))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(message)"
        raise InvalidMessage(f"{where}: {error.message}"[:300])


def decode(payload: bytes) -> dict[str, Any]:
    """Parse and validate one MQTT payload; ``InvalidMessage`` when it is not a v1 message
    (anyone who may publish on the topic can send one: parsed within bounds, ``bounded_json``)."""
    try:
        message = bounded_json.loads(payload, what="the payload", max_bytes=MAX_PAYLOAD_BYTES)
    except InvalidParameter as exc:
        raise InvalidMessage(exc.message[:300]) from None
    validate(message)
    return message


def _tag(value: Any) -> str:
    if value is None:
        return NONE_TAG
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_point(message: dict[str, Any]) -> PointData:
    """The point for one validated message: tags ``TAGS``, numeric fields (see docs)."""
    tags = {name: _tag(message[name]) for name in TAGS}
    fields: dict[str, float | int] = {
        "pid": int(message["pid"]),
        "error": int(message["status"] >= 400),
    }
    for stage in (*STAGES, *OPTIONAL_STAGES):
        if stage in message["latency_ms"]:
            fields[f"latency_{stage}_ms"] = float(message["latency_ms"][stage])
    for name, value in (message.get("gallery") or {}).items():
        if value is not None:
            fields[f"gallery_{name}"] = value
    for name, value in (message.get("watch") or {}).items():
        fields[f"watch_{name}"] = int(value)
    if message["match"] is not None:
        fields["matched"] = int(message["match"])
    for name in ("distance", "threshold"):
        if message[name] is not None:
            fields[name] = float(message[name])
    for face in message["faces"]:
        role = face["role"]
        fields[f"faces_{role}"] = int(face["count"])
        if face["probability"] is not None:
            fields[f"probability_{role}"] = float(face["probability"])
        for side in ("image_width", "image_height"):
            if face[side] is not None:
                fields[f"{side}_{role}"] = int(face[side])
    return PointData(time_ns=parse_timestamp_ns(message["timestamp"]), tags=tags, fields=fields)


def field_names() -> set[str]:
    """Every field name a point can carry (the dashboards and the report use only these)."""
    names = {"pid", "error", "matched", "distance", "threshold"}
    names |= {f"latency_{stage}_ms" for stage in (*STAGES, *OPTIONAL_STAGES)}
    names |= {f"gallery_{name}" for name in GALLERY_FIELDS}
    names |= {f"watch_{name}" for name in WATCH_FIELDS}
    for role in ROLES:
        names |= {
            f"faces_{role}",
            f"probability_{role}",
            f"image_width_{role}",
            f"image_height_{role}",
        }
    return names
