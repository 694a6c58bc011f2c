"""Give back to the system the heap that large requests left free, once a worker is idle (issue
24, "memory comes back").

glibc's malloc keeps what a request freed: once its adaptive mmap threshold has risen past a
size, buffers of that size (Pillow's 16 MiB blocks of a 40 MP photo, the 16-bit PNG's copies) come
from the heaps of the threads that asked for them, and stay resident there after they are freed,
in every arena of the request and compute threads. ``malloc_trim(0)`` hands every free page of
every arena back, but a trim after each request would make the next one fault its pages in
again, and the trim itself takes 2-250 ms (a shared 2-core machine, 40 MP requests).

So a ``HeapTrimmer`` per worker counts its running requests (Gunicorn's ``pre_request`` and
``post_request``) and, when the last one is answered with the worker's resident anonymous memory
more than ``growth`` bytes above its floor (what it held after its last trim, or at its first
request), trims ``IDLE_S`` later if no request has run meanwhile. Requests in a row never wait for
a trim nor fault in pages it gave back; what they use is kept while they come. A request that grew
the worker by less than ``growth`` (LFW photos: about 40 MiB) costs one read of
``/proc/self/statm``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

#: Seconds a worker has been idle when it trims.
IDLE_S = 1.0


@functools.cache
def glibc():
    """The C library when it is glibc (it has ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    return libc


def anonymous_bytes() -> int:
    """This process's resident anonymous memory (its heaps and copied pages, not the mapped
    files whose pages a worker's first requests fault in): resident less shared pages in
    ``/proc/self/statm`` (0 where it is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
    except OSError:
        return 0
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")


class HeapTrimmer:
    """One worker's requests counted, and its free heap trimmed when it is idle after growing
    more than ``growth`` bytes (0: never)."""

    def __init__(self, growth: int):
        self.growth = max(0, growth) if glibc() is not None else 0
        self._lock = threading.Lock()
        self._running = 0
        self._answered = 0.0  # time.monotonic() of the last answer
        self._pending = False  # a trim is scheduled
        self._floor = anonymous_bytes()

    def started(self) -> None:
        """A request of this worker begins."""
        with self._lock:
            self._running += 1

    def finished(self) -> None:
        """A request of this worker was answered: schedule a trim if the worker is now idle
        and has grown."""
        with self._lock:
            self._running = max(0, self._running - 1)
            self._answered = time.monotonic()
            if self._running or self._pending or not self.growth:
                return
            if anonymous_bytes() - self._floor <= self.growth:
                return
            self._pending = True
        self._schedule(IDLE_S)

    def _schedule(self, seconds: float) -> None:
        timer = threading.Timer(seconds, self._trim_if_idle)
        timer.daemon = True
        timer.start()

    def _trim_if_idle(self) -> None:
        """Trim if no request ran for ``IDLE_S``; wait longer if one was answered meanwhile;
        leave it to the next answer if one is running."""
        with self._lock:
            wait = self._answered + IDLE_S - time.monotonic()
            if self._running or wait > 0:
                self._pending = not self._running
                if self._pending:
                    self._schedule(wait)
                return
        before, start = anonymous_bytes(), time.perf_counter()
        glibc().malloc_trim(0)
        after = anonymous_bytes()
        with self._lock:
            if not self._running:
                self._floor = after
            self._pending = False
        log.info(
            "heap trimmed: %d -> %d MiB in %.0f ms",
            before >> 20,
            after >> 20,
            (time.perf_counter() - start) * 1000,
        )
