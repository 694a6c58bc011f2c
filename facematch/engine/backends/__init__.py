"""Where a network runs. Every runtime backend offers ``run(x) -> outputs``: a float32 NumPy
batch in, the network's outputs as a tuple of float32 NumPy arrays out. ``get_runtime`` picks
one by the name the options give; no other code branches on backend names.

* ``torch`` (``pytorch_runtime``): the PyTorch module itself, on any device;
* ``onnx`` (``onnx_runtime``): ONNX Runtime on the CPU over the network's float32 graph, read
  from ``<data dir>/<network>.onnx`` where ``python -m deployment_utils.graphs build`` wrote it
  at set-up (``graph_files``); without a current graph file it is exported from the PyTorch
  module at start-up (slower, and PyTorch is then imported);
* ``onnx-int8`` (``onnx_int8_runtime``): ONNX Runtime over the prepared, statically quantized
  embedder read from a file (built by the same set-up command).

Only the ``torch`` backend and the export fallback import PyTorch: a server whose graphs were
built at set-up answers requests without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from facematch.engine.backends.graph_files import current_graph
from facematch.engine.backends.onnx_int8_runtime import load_int8_runtime
from facematch.engine.backends.onnx_runtime import OnnxRuntime

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """A network ready to run."""

    def run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """The network's outputs for the float32 batch ``x``."""
        ...


@dataclass(frozen=True)
class Network:
    """A network by name (its graph file's stem), how to build its PyTorch module (``load``,
    called only when PyTorch runs it or its graph must be exported), an example input's shape
    and the input axes whose size may vary (axis -> name), and the file its weights come from
    (``source``: a graph built from another version of that file is not used; None: the file
    is not installed here, so a built graph is trusted and none can be exported)."""

    name: str
    load: Callable[[], Any] = field(repr=False, compare=False)
    example_shape: tuple[int, ...]
    dynamic_axes: dict[int, str]
    source: Path | None = None


@dataclass(frozen=True)
class Placement:
    """Where runtimes run: the torch device name, intra-op threads, the folder of built graphs
    and the prepared int8 graph."""

    device: str
    threads: int
    graph_dir: Path | None = None
    int8_graph: Path | None = None


def _torch(network: Network, at: Placement) -> Runtime:
    from facematch.engine.backends.pytorch_runtime import TorchRuntime

    return TorchRuntime(network.load(), at.device)


def _onnx(network: Network, at: Placement) -> Runtime:
    graph = current_graph(at.graph_dir, network.name, network.source)
    if graph is not None:
        return OnnxRuntime(graph, at.threads)
    if network.source is None:
        raise ValueError(
            f"no ONNX graph of {network.name} in {at.graph_dir}, and its weights are not "
            "installed here to export one from; build the graphs with "
            "`python -m deployment_utils.graphs build` (the image's builder stage does)"
        )
    from facematch.engine.backends.onnx_export import export_onnx

    log.warning(
        "no current ONNX graph of %s in %s: exporting it from PyTorch at start-up (slower, "
        "more memory); build it once with `python -m deployment_utils.graphs build`",
        network.name,
        at.graph_dir,
    )
    graph_bytes = export_onnx(network.load(), network.example_shape, network.dynamic_axes)
    return OnnxRuntime(graph_bytes, at.threads)


_FACTORIES: dict[str, Callable[[Network, Placement], Runtime]] = {
    "torch": _torch,
    "onnx": _onnx,
    "onnx-int8": lambda net, at: load_int8_runtime(at.int8_graph, at.threads, net.source),
}
RUNTIMES = tuple(_FACTORIES)


def get_runtime(name: str, network: Network, placement: Placement) -> Runtime:
    """The runtime backend ``name`` (one of ``RUNTIMES``) running ``network``."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown runtime backend {name!r}; expected one of {RUNTIMES}")
    return _FACTORIES[name](network, placement)
