"""The ONNX Runtime backend (CPU): a session over a serialized graph, a file or bytes.

A graph built at set-up is handed to ONNX Runtime as its file: the session then holds the
weights once (the float embedder: 103 MiB) instead of beside a parsed copy of the bytes (193 MiB).

A session with one intra-op thread owns no thread pool, so it is built at once and one built
before Gunicorn forks its workers is shared by them (copy-on-write). A session with a thread pool
must never exist in a process that forks (the child's next session hangs), so with more threads
each process builds its own on first use.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np


class OnnxRuntime:
    """An ONNX Runtime session over a serialized graph with one input ``x``."""

    def __init__(self, graph: bytes | Path, threads: int):
        """A session over ``graph`` (a serialized graph, or the path of its file) with
        ``threads`` intra-op threads."""
        import onnxruntime  # noqa: F401 - fail at start-up, not on the first request

        self.threads = max(1, threads)
        self._graph: bytes | str | None = str(graph) if isinstance(graph, Path) else graph
        self._lock = threading.Lock()
        self._session, self._pid = None, 0
        if self.threads == 1:
            self._session, self._pid, self._graph = self._build(), os.getpid(), None

    def _build(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # No arena: a worker's runs return their activations to the allocator instead of
        # keeping the largest run's in the arena (total PSS of a default server after 20 LFW
        # requests, measured with a fixed mmap threshold: 382 MiB with the arena, 293 without;
        # no slower: docs/performance.md).
        options.enable_cpu_mem_arena = False
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(
            self._graph, options, providers=["CPUExecutionProvider"]
        )

    def run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run the graph on the float32 batch ``x``; the outputs in the graph's order."""
        if self._graph is not None and self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._session, self._pid = self._build(), os.getpid()
        feed = {"x": np.ascontiguousarray(x, dtype=np.float32)}
        return tuple(self._session.run(None, feed))
