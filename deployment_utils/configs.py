"""Named settings on the command line (``NAME:key=value,...`` on top of the environment) and the
embed backend's tag for cache keys: what the deployment tools (``calibration``) and the benchmark
commands share. ``benchmarking_utils`` imports it; it imports only the runtime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

from facematch.config import PREFIX, Settings
from facematch.engine.backends.onnx_int8_runtime import INT8_RECIPE


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
