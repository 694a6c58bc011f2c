"""What the benchmark commands share: settings for in-process requests, statistics, the
machine's description, form uploads, result files (named settings on the command line are
``deployment_utils.configs``, shared with the deployment tools)."""

from __future__ import annotations

import io
import json
import os
import platform
from pathlib import Path

import numpy as np

from facematch.config import Settings

EMBED_GFLOP = 2.84  # InceptionResnetV1, one 160x160 face (multiply-adds counted as 2)


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
