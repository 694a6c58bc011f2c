"""The threads one request's work runs on, and how many such threads run at once.

A request's independent pieces of work (detecting its two photos, embedding halves of its batch)
run on a per-process pool of one thread per core; ONNX Runtime and Pillow release the GIL, so
one request on an idle machine uses every core. Each piece holds one of ``cores`` slots while it
runs, and the slots are a semaphore created before Gunicorn forks (``preload``), so all workers
together never run more pieces than there are cores: under load nothing is oversubscribed, and
each runtime session keeps one intra-op thread. A slot not had within ``SLOT_WAIT_S`` (only a
worker killed while holding one could cause that) is skipped rather than waited for forever.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
SLOT_WAIT_S = 5.0


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _shared_semaphore(count: int):
    """A semaphore that forked children share; a thread semaphore where the platform has none."""
    try:
        return multiprocessing.get_context("fork").BoundedSemaphore(count)
    except (OSError, ImportError, ValueError):
        return threading.BoundedSemaphore(count)


class ComputeSlots:
    """Runs pieces of work on up to ``cores`` threads, at most ``cores`` at once machine-wide."""

    def __init__(self, cores: int):
        self.cores = max(1, cores)
        self._slots = _shared_semaphore(self.cores)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def _executor(self) -> ThreadPoolExecutor:
        """This process's pool (a pool's threads do not survive a fork: one per process)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pool = ThreadPoolExecutor(self.cores, thread_name_prefix="compute")
                    self._pid = os.getpid()
        return self._pool

    def run(self, work: Callable[[T], R], item: T) -> R:
        """``work(item)`` holding a slot."""
        held = self._slots.acquire(timeout=SLOT_WAIT_S)
        try:
            return work(item)
        finally:
            if held:
                self._slots.release()

    def map(self, work: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``work`` on every item, concurrently, results in order; the first item's exception
        (in item order) is raised after all have finished."""
        if self.cores == 1 or len(items) < 2:
            return [self.run(work, item) for item in items]
        futures = [self._executor().submit(self.run, work, item) for item in items[1:]]
        try:
            first = self.run(work, items[0])
        finally:
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
        return [first, *(f.result() for f in futures)]
