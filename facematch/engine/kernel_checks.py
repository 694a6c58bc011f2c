"""Checks of the CPU-specific fast paths, run once per process at start, before any request.

ONNX Runtime picks its integer kernels by CPU: x86 with VNNI, x86 with AVX2 only (whose
``VPMADDUBSW`` sums pairs of u8 x s8 products into saturating int16), ARM with or without
dot-product instructions. Code that is exact on one CPU can be silently wrong on another, so each
fast path (the int8 embedder, the gallery's int8 search) runs a small fixed probe through the
kernel that will serve and compares it with the same numbers computed exactly in NumPy. A path
whose check fails is replaced by its float32 path, one line is logged naming the kernel and the
CPU's flags, and ``GET /health`` says so under ``kernels``: never a silent wrong answer.
"""

from __future__ import annotations

import functools
import logging
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PASSED = "passed"
FELL_BACK = "failed: fell back to float32"
NOT_NEEDED = "not needed: float32"
#: CPU flags that decide which integer kernels ONNX Runtime runs (x86 and ARM).
_FLAGS = re.compile(r"^(avx2|avx512.*|.*vnni.*|amx.*|asimddp|i8mm|sve.*|sme\d?)$")


@dataclass(frozen=True)
class KernelCheck:
    """The outcome of one fast path's check: what serves, whether the probe matched the exact
    numbers within ``tolerance``, and the largest error seen (in the units the path states)."""

    kernel: str
    backend: str
    check: str
    max_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.check != FELL_BACK

    def as_json(self) -> dict:
        return {
            "backend": self.backend,
            "check": self.check,
            "max_error": self.max_error,
            "tolerance": self.tolerance,
        }


def judge(kernel: str, max_error: float, tolerance: float, fast: str, slow: str) -> KernelCheck:
    """The check of ``kernel``: ``fast`` serves when ``max_error`` is within ``tolerance``,
    else ``slow`` serves and one line is logged naming the kernel and the CPU's flags."""
    max_error = float(max_error)
    if np.isfinite(max_error) and max_error <= tolerance:
        return KernelCheck(kernel, fast, PASSED, max_error, tolerance)
    log.error(
        "kernel check failed: %s (%s) is off by %.6g (tolerance %.6g) on this CPU (%s, "
        "flags: %s); serving it in float32 (%s) instead",
        kernel,
        fast,
        max_error,
        tolerance,
        platform.machine(),
        " ".join(cpu_flags()) or "none of note",
        slow,
    )
    return KernelCheck(kernel, slow, FELL_BACK, max_error, tolerance)


def cosine_error(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest ``1 - cosine`` between matching rows of ``got`` and ``expected``."""
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    dots = np.sum(got * expected, axis=1)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    cosines = np.divide(dots, norms, out=np.full_like(dots, -1.0), where=norms > 0)
    return float(np.max(1.0 - cosines))  # a row of zeros or NaN counts as opposite


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    """This CPU's flags that matter to integer kernels (``/proc/cpuinfo``'s x86 ``flags`` or
    ARM ``Features``), sorted; empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    found = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            found.update(flag for flag in value.split() if _FLAGS.match(flag))
    return tuple(sorted(found))
