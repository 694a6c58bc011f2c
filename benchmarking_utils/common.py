"""What the benchmark commands share: named settings, settings for in-process requests,
statistics, the machine's description, form uploads, result files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facematch.config import PREFIX, Settings
from facematch.engine.backends.onnx_int8_runtime import INT8_RECIPE

EMBED_GFLOP = 2.84  # InceptionResnetV1, one 160x160 face (multiply-adds counted as 2)


@dataclass(frozen=True)
class Config:
    """A named set of engine settings."""

    name: str
    settings: Settings

    def describe(self) -> dict:
        s = self.settings
        return {
            "margin": s.margin,
            "face_selection": s.face_selection,
            "detect_max_side": s.detect_max_side,
            "flip_embeddings": s.flip_embeddings,
            "embed_backend": s.embed_backend,
            "detect_backend": s.detect_backend,
            "min_face_size": s.min_face_size,
            "center_embeddings": s.center_embeddings,
            "align_faces": s.align_faces,
            "torch_threads": s.torch_threads,
        }


def embedder_tag(embed_backend: str) -> str:
    """The embed backend's name for cache keys; for ``onnx-int8`` with a hash of the int8 graph's
    recipe, so embeddings cached from a graph quantized another way are not reused."""
    if embed_backend != "onnx-int8":
        return embed_backend
    recipe = json.dumps(INT8_RECIPE, sort_keys=True).encode()
    return f"{embed_backend}-{hashlib.sha256(recipe).hexdigest()[:8]}"


def parse_config(text: str, **fixed) -> Config:
    """``name:key=value,key=value`` (keys are Settings fields) on top of the environment;
    ``fixed`` overrides (e.g. the broker and API keys off) are applied last."""
    name, _, assignments = text.partition(":")
    fields = {f.name for f in dataclasses.fields(Settings)}
    environ = dict(os.environ)
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown setting {key!r} in {text!r}")
        environ[PREFIX + key.upper()] = value
    return Config(name or "default", Settings.from_env(environ, **fixed))


def local_settings(settings: Settings) -> Settings:
    """The settings with metrics, API keys and signing off: in-process benchmark requests."""
    return settings.replace(mqtt_host="", api_keys="", api_keys_file="", signing_keys="")


def summary(values: list[float]) -> dict:
    """Median, 95th percentile and maximum (and the count) of a list of milliseconds."""
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "median": round(float(np.median(a)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "max": round(float(a.max()), 2),
    }


def machine() -> str:
    """CPU model, core count, OS and architecture."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") or line.startswith("Model"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, {platform.system()} {platform.machine()}"


def multipart(**photos: bytes) -> dict:
    """Form data for the Flask test client: each named photo as an uploaded file."""
    return {key: (io.BytesIO(value), f"{key}.jpg") for key, value in photos.items()}


def write_json(path: Path | None, result: dict) -> None:
    """Write a command's result as indented JSON to ``path`` (nothing when it is None)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
