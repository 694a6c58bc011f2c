"""The ONNX Runtime int8 backend: a prepared, statically quantized embedder read from a file.

``python -m deployment_utils.graphs build`` (through ``deployment_utils.quantize``) builds the
graph, calibrated on the face crops shipped in ``model_data/``, into
``<data dir>/<model>.int8.onnx``, with a note of the weights file it was built from, and beside
it the probe its kernels are checked with at start (``<model>.int8.onnx.probe.npz``: a few of
those crops and their float32 embeddings by PyTorch); this module only finds and loads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facematch.engine.backends.graph_files import current_file
from facematch.engine.backends.onnx_runtime import OnnxRuntime

INT8_BUILD = "python -m deployment_utils.graphs build"

# How the graph is quantized; a graph noted with another recipe is rebuilt. Weights use 7 bits
# (reduce_range): on x86 CPUs without VNNI ONNX Runtime multiplies u8 by s8 with VPMADDUBSW, whose
# 16-bit sums saturate on 8-bit weights (embeddings fell to cosine 0.57 of float32 on an
# emulated Haswell; with 7 bits they are the same on every CPU: docs/performance.md).
INT8_RECIPE = {
    "format": "QDQ",
    "activations": "QUInt8",
    "weights": "QInt8",
    "per_channel": True,
    "reduce_range": True,
}


#: How far the int8 embedder's vectors for the probe crops may be from float32's: 1 - cosine.
#: Measured 0.0004-0.002 on sound kernels (x86 with and without VNNI, Pi 4 and Pi 5 emulated);
#: the saturating kernel of 8-bit weights on AVX2 gave up to 0.43 (docs/performance.md).
PROBE_TOLERANCE = 0.01


def int8_graph_path(data_dir: Path, model: str) -> Path:
    """Where the int8 embedder of ``model`` is built and read: ``<data_dir>/<model>.int8.onnx``."""
    return Path(data_dir).expanduser() / f"{model}.int8.onnx"


def load_int8_runtime(path: Path | None, threads: int, source: Path | None) -> OnnxRuntime:
    """A session over the prepared int8 graph at ``path``, built from the weights file
    ``source`` as it is now with ``INT8_RECIPE``; ValueError naming the build command when there
    is none."""
    if path is None or not Path(path).is_file():
        raise ValueError(
            f"FACEMATCH_EMBED_BACKEND=onnx-int8 needs {path}; build it with {INT8_BUILD}"
        )
    if current_file(Path(path), source, INT8_RECIPE) is None:
        raise ValueError(
            f"{path} was not built from the weights file {source} as it is now with this "
            f"version's quantization; rebuild it "
            f"with {INT8_BUILD} (or set FACEMATCH_EMBED_BACKEND=onnx)"
        )
    if load_probe(Path(path)) is None:
        probe = probe_path(Path(path))
        raise ValueError(f"{probe} is missing or stale; build it with {INT8_BUILD}")
    return OnnxRuntime(Path(path), threads)


def probe_path(graph: Path) -> Path:
    """Where the kernel probe of the int8 graph ``graph`` lives: ``<graph>.probe.npz``."""
    return graph.with_name(graph.name + ".probe.npz")


def graph_sha256(graph: Path) -> str | None:
    """The SHA-256 of ``graph`` as its build note records it (None: no note)."""
    try:
        return json.loads(graph.with_name(graph.name + ".json").read_text()).get("sha256")
    except (OSError, ValueError):
        return None


def load_probe(graph: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The probe of ``graph``: standardised crops (n, 3, 160, 160) and their unit float32
    embeddings (n, 512); None when there is none, or it was made for another build."""
    try:
        with np.load(probe_path(graph), allow_pickle=False) as probe:
            if str(probe["graph_sha256"]) != graph_sha256(graph):
                return None
            return probe["crops"].astype(np.float32), probe["float32"].astype(np.float32)
    except (OSError, KeyError, ValueError):
        return None
