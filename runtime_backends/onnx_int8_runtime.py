"""The ONNX Runtime int8 backend: a prepared, statically quantized embedder read from a file.

``python -m deployment_utils.graphs build`` (through ``deployment_utils.quantize``) builds the
graph, calibrated on the face crops shipped in ``model_data/``, into
``<data dir>/<model>.int8.onnx``, with a note of the weights file it was built from; this
module only finds and loads it.
"""

from __future__ import annotations

from pathlib import Path

from runtime_backends.graph_files import current_file
from runtime_backends.onnx_runtime import OnnxRuntime

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
    return OnnxRuntime(Path(path), threads)
