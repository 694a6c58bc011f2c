"""The ONNX Runtime backend (float32, CPU): a graph exported from the loaded PyTorch module.

A session with one intra-op thread owns no thread pool, so it is built at once and one built
before Gunicorn forks its workers is shared by them (copy-on-write). A session with a thread pool
must never exist in a process that forks (the child's next session hangs), so with more threads
each process builds its own on first use.
"""

from __future__ import annotations

import io
import os
import threading
import warnings

import numpy as np
import torch

ONNX_OPSET = 17


def export_onnx(module: torch.nn.Module, shape: tuple[int, ...], dynamic: dict[int, str]) -> bytes:
    """Serialize ``module`` to an ONNX graph (TorchScript exporter) with one input ``x``, traced
    with zeros of ``shape``; ``dynamic`` names the input axes whose size may vary."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            torch.zeros(shape),
            buffer,
            input_names=["x"],
            dynamic_axes={"x": dynamic},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


class OnnxRuntime:
    """An ONNX Runtime session over a serialized graph with one input ``x``."""

    def __init__(self, graph: bytes, threads: int):
        import onnxruntime  # noqa: F401 - fail at start-up, not on the first request

        self.threads = max(1, threads)
        self._graph: bytes | None = graph
        self._lock = threading.Lock()
        self._session, self._pid = None, 0
        if self.threads == 1:
            self._session, self._pid, self._graph = self._build(), os.getpid(), None

    @classmethod
    def export(
        cls, module: torch.nn.Module, shape: tuple[int, ...], dynamic: dict[int, str], threads: int
    ) -> OnnxRuntime:
        """A session over ``module`` exported to ONNX (see ``export_onnx``)."""
        return cls(export_onnx(module, shape, dynamic), threads)

    def _build(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(
            self._graph, options, providers=["CPUExecutionProvider"]
        )

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run the graph on ``x`` (as float32 on the CPU); the outputs in the graph's order."""
        if self._graph is not None and self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._session, self._pid = self._build(), os.getpid()
        feed = {"x": np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)}
        return tuple(torch.from_numpy(out) for out in self._session.run(None, feed))
