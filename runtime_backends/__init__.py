"""Where a network runs. Every runtime backend offers ``run(x) -> outputs``: a float32 batch
tensor in, the network's outputs as a tuple of tensors out. ``get_runtime`` picks one by the
name the options give; no other code branches on backend names.

* ``torch`` (``pytorch_runtime``): the PyTorch module itself, on any device;
* ``onnx`` (``onnx_runtime``): ONNX Runtime on the CPU, over a graph exported at start-up from
  the loaded PyTorch module, so both compute the same function;
* ``onnx-int8`` (``onnx_int8_runtime``): ONNX Runtime over a prepared, statically quantized graph
  read from a file (``python -m deployment_utils.quantize`` builds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from runtime_backends.onnx_int8_runtime import load_int8_runtime
from runtime_backends.onnx_runtime import OnnxRuntime
from runtime_backends.pytorch_runtime import TorchRuntime


class Runtime(Protocol):
    """A network ready to run."""

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The network's outputs for the float32 batch ``x``."""
        ...


@dataclass(frozen=True)
class Network:
    """A loaded PyTorch network and how to export it: an example input's shape and the input
    axes whose size may vary (axis -> name), for the ONNX graph."""

    module: torch.nn.Module = field(repr=False)
    example_shape: tuple[int, ...]
    dynamic_axes: dict[int, str]


@dataclass(frozen=True)
class Placement:
    """Where runtimes run: the torch device, intra-op threads, and the prepared int8 graph."""

    device: torch.device
    threads: int
    int8_graph: Path | None = None


_FACTORIES: dict[str, Callable[[Network, Placement], Runtime]] = {
    "torch": lambda net, at: TorchRuntime(net.module, at.device),
    "onnx": lambda net, at: OnnxRuntime.export(
        net.module, net.example_shape, net.dynamic_axes, at.threads
    ),
    "onnx-int8": lambda net, at: load_int8_runtime(at.int8_graph, at.threads),
}
RUNTIMES = tuple(_FACTORIES)


def get_runtime(name: str, network: Network, placement: Placement) -> Runtime:
    """The runtime backend ``name`` (one of ``RUNTIMES``) running ``network``."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown runtime backend {name!r}; expected one of {RUNTIMES}")
    return _FACTORIES[name](network, placement)
