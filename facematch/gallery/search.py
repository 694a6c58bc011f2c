"""Exact nearest-face search over one gallery's embeddings held in this process's memory.

Scanning n x 512 float32 reads 2 KB per face: at 100,000 faces that is 200 MB per query, about
20 ms of memory bandwidth on a small machine, whatever the arithmetic. So the matrix is also kept
as 7-bit integer codes (one scale per row, a quarter of the bytes), which ONNX Runtime's integer
matmul (``MatMulInteger``, u8 x s8) scans in a few milliseconds. Each integer score comes with a
bound on its error (from the rounding residuals of the row and of the query), and every face
whose bound could reach the k-th best exact score is rescored in float32: the answer is the exact
top k (ties aside), not an approximation. Small galleries (up to ``FLOAT_SCAN_ROWS`` faces) are
scanned in float32 outright: there the integer pass's fixed cost is larger than the scan.

The bound holds only if the kernel's integer sums are exact. On x86 CPUs without VNNI, ONNX
Runtime adds pairs of u8 x s8 products in int16 (``VPMADDUBSW``), which saturates above 32,767:
with 8-bit row codes (255 x 127 x 2 = 64,770) the true nearest rows were discarded and some
searches returned nothing. Rows therefore use 7 bits (255 x 63 x 2 = 32,130: exact on every
kernel; u8 x u8 codes are exact too but ten times slower on AVX2), and ``kernel_check`` runs a
fixed probe of the extreme codes through the kernel at start, comparing its sums with NumPy's
exact ones: a kernel that differs is not used, and every search is a float32 scan instead.

``FaceMatrix`` grows in place (rows ``[0, n)`` are valid), so a search running on a snapshot is
never disturbed by rows appended after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facematch.engine.kernel_checks import NOT_NEEDED, KernelCheck, judge

DIM = 512
BLOCK = 16_384  # faces per int8 block: blocks are stored transposed (512 x BLOCK) for the matmul
ROW_MAX = 63  # row codes in [-63, 63]: 7 bits, so no pair of products can saturate int16
QUERY_MAX = 127  # query codes in [-127, 127], sent to the kernel as u8 (code + 128)
_SLACK = 1e-5  # float32 rounding in the scores, added to every bound
# Up to this many faces a float32 scan is faster than the integer pass and its bounds: the matrix
# is still in cache and the pass's fixed cost (a session run, the rescoring) dominates. Measured
# on an AVX2 EPYC (docs/performance.md, benchmarking_utils.kernel_speed): float32 0.85 against
# 0.96 ms at 8,000 faces, 2.17 against 1.56 ms at 20,000.
FLOAT_SCAN_ROWS = 8_192
KERNEL = "gallery_search"
INT8_BACKEND = "onnxruntime MatMulInteger (u8 x s8, 7-bit rows)"
FLOAT_BACKEND = "numpy float32 scan"

SCORES_GRAPH = Path(__file__).resolve().parents[2] / "model_data" / "gallery_scores.onnx"

#: An integer kernel: (1, 512) u8 query bytes @ (512, m) int8 codes -> (m,) int32 sums.
Scores = Callable[[np.ndarray, np.ndarray], np.ndarray]

_session = None
_session_lock = threading.Lock()
_checked: tuple[Scores | None, KernelCheck] | None = None
_checked_lock = threading.Lock()


def _matmul():
    """The process's ONNX Runtime session computing (1 x 512 u8) @ (512 x m s8) -> int32, over
    the shipped graph ``SCORES_GRAPH`` (built by ``deployment_utils.graphs``)."""
    global _session
    with _session_lock:
        if _session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # workers and threads are the parallelism
            options.inter_op_num_threads = 1
            _session = ort.InferenceSession(
                str(SCORES_GRAPH), options, providers=["CPUExecutionProvider"]
            )
        return _session


def onnx_scores(query: np.ndarray, block: np.ndarray) -> np.ndarray:
    """ONNX Runtime's ``MatMulInteger`` of the query bytes and a block of codes: int32 sums."""
    return _matmul().run(None, {"query": query, "block": block})[0][0]


def kernel_check() -> KernelCheck:
    """This process's search kernel: ONNX Runtime's, checked once (``create_app`` runs it at
    start, before the fork) and kept."""
    with _checked_lock:
        if _checked is None:
            _use(onnx_scores)
        return _checked[1]


def use_kernel(scores: Scores | None) -> KernelCheck:
    """Check ``scores`` and search with it from now on (with the float32 scan where it fails);
    None: the float32 scan outright. Tests force a failing kernel; benchmarks compare."""
    with _checked_lock:
        return _use(scores)


def _use(scores: Scores | None) -> KernelCheck:
    global _checked
    if scores is None:
        check = KernelCheck(KERNEL, FLOAT_BACKEND, NOT_NEEDED, 0.0, 0.0)
    else:
        check = judge(KERNEL, probe_error(scores), 0.0, INT8_BACKEND, FLOAT_BACKEND)
    _checked = (scores if check.passed and scores is not None else None, check)
    return check


def _kernel() -> Scores | None:
    """The checked integer kernel, or None where the search scans in float32."""
    if _checked is None:
        kernel_check()
    return _checked[0]


def probe_error(scores: Scores) -> int:
    """The largest difference between ``scores``' sums and NumPy's exact ones over a fixed
    probe: every pairing of the extreme query bytes (1, 255) with the extreme row codes (-63, 63),
    where saturation would show first, and random codes."""
    rng = np.random.default_rng(21)
    signs = np.where(rng.random(DIM) < 0.5, -1, 1)
    rows = rng.integers(-ROW_MAX, ROW_MAX + 1, (1024, DIM))
    rows[:4] = np.stack([signs, -signs, np.ones(DIM), -np.ones(DIM)]) * ROW_MAX
    queries = rng.integers(128 - QUERY_MAX, 129 + QUERY_MAX, (6, DIM))
    queries[:4] = 128 + np.stack([signs, -signs, np.ones(DIM), -np.ones(DIM)]) * QUERY_MAX
    block = np.ascontiguousarray(rows.T, dtype=np.int8)
    exact = queries @ rows.T
    got = np.stack([scores(q.astype(np.uint8)[None], block) for q in queries])
    return int(np.abs(got.astype(np.int64) - exact).max())


@dataclass(frozen=True)
class _Snapshot:
    n: int
    vectors: np.ndarray  # (n, 512) float32, unit rows
    blocks: tuple[np.ndarray, ...]  # (512, BLOCK) int8 each, columns = rows
    scales: np.ndarray  # (n,) float32: row ~= scale * int8 row
    residuals: np.ndarray  # (n,) float32: || row - scale * int8 row ||
    offsets: np.ndarray  # (n,) int32: 128 x the sum of each int8 row (the query's u8 shift)
    owners: np.ndarray  # (n,) int32: index of each row's subject
    max_residual: float  # the largest of ``residuals``


class FaceMatrix:
    """Unit embeddings with a face id and a subject each, searched exactly."""

    def __init__(self, float_scan_rows: int = FLOAT_SCAN_ROWS) -> None:
        """An empty matrix; up to ``float_scan_rows`` faces it is scanned in float32."""
        self.float_scan_rows = float_scan_rows
        self.n = 0
        self.vectors = np.empty((0, DIM), np.float32)
        self.ids = np.empty(0, np.int64)
        self.owners = np.empty(0, np.int32)
        self.scales = np.empty(0, np.float32)
        self.residuals = np.empty(0, np.float32)
        self.offsets = np.empty(0, np.int32)
        self.max_residual = 0.0
        self.blocks: list[np.ndarray] = []
        self.subjects: list[str] = []
        self._subject_index: dict[str, int] = {}

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` faces in all (a load that knows its size grows once)."""
        if capacity > len(self.vectors):
            self._grow_to(capacity)

    def append(self, ids: list[int], subjects: list[str], vectors: np.ndarray) -> None:
        """Add faces (unit vectors, shape (m, 512)); not thread-safe: callers serialise."""
        m = len(ids)
        need = self.n + m
        if need > len(self.vectors):
            self._grow_to(max(need + need // 4, 1024))
        rows = slice(self.n, need)
        self.vectors[rows] = vectors
        self.ids[rows] = ids
        for i, subject in enumerate(subjects, self.n):
            owner = self._subject_index.get(subject)
            if owner is None:
                owner = self._subject_index[subject] = len(self.subjects)
                self.subjects.append(subject)
            self.owners[i] = owner
        scales = np.maximum(np.abs(vectors).max(axis=1), 1e-12) / ROW_MAX
        codes = np.rint(vectors / scales[:, None]).astype(np.int8)
        self.scales[rows] = scales
        residuals = np.linalg.norm(vectors - scales[:, None] * codes, axis=1)
        self.residuals[rows] = residuals
        self.max_residual = max(self.max_residual, float(residuals.max(initial=0.0)))
        self.offsets[rows] = 128 * codes.sum(axis=1, dtype=np.int32)
        start = self.n
        while start < need:
            block, column = divmod(start, BLOCK)
            if block == len(self.blocks):
                self.blocks.append(np.zeros((DIM, BLOCK), np.int8))
            end = min(need, (block + 1) * BLOCK)
            self.blocks[block][:, column : column + end - start] = codes[
                start - self.n : end - self.n
            ].T
            start = end
        self.n = need

    def _grow_to(self, capacity: int) -> None:
        self.vectors = _grow(self.vectors, capacity)
        self.ids = _grow(self.ids, capacity)
        self.owners = _grow(self.owners, capacity)
        self.scales = _grow(self.scales, capacity)
        self.residuals = _grow(self.residuals, capacity)
        self.offsets = _grow(self.offsets, capacity)

    def _snapshot(self) -> _Snapshot:
        n = self.n
        return _Snapshot(
            n,
            self.vectors[:n],
            tuple(self.blocks[: -(-n // BLOCK)]),
            self.scales[:n],
            self.residuals[:n],
            self.offsets[:n],
            self.owners[:n],
            self.max_residual,
        )

    def nearest(self, query: np.ndarray, k: int, per_subject: bool) -> list[tuple[int, float]]:
        """``(row, cosine distance)`` of the ``k`` nearest faces (or, ``per_subject``, of the
        nearest face of each of the ``k`` nearest subjects), nearest first."""
        snap = self._snapshot()
        if snap.n == 0:
            return []
        kernel = _kernel()
        if kernel is None or snap.n <= self.float_scan_rows:  # every row scored in float32
            approx, q_error = snap.vectors @ query, None
        else:
            approx, q_error = _approximate(snap, query, kernel)
        # an exact k-th best score from the best approximate rows: a floor for the answer
        take = min(snap.n, 4 * k if per_subject else k)
        while True:
            first = _top(approx, take)
            scores = approx[first] if q_error is None else snap.vectors[first] @ query
            chosen = _select(first, scores, snap.owners, k, per_subject)
            if len(chosen) == k or take == snap.n:
                break
            take = min(snap.n, 4 * take)
        if q_error is None:  # exact scores already
            return [(i, _distance(s)) for i, s in chosen]
        floor = chosen[-1][1] if len(chosen) == k else -np.inf
        # rows within the largest error bound of the floor, then each row's own bound
        loose = snap.max_residual + (1.0 + snap.max_residual) * q_error + _SLACK
        candidates = np.flatnonzero(approx >= np.float32(floor - loose))
        bound = snap.residuals[candidates] + (1.0 + snap.residuals[candidates]) * q_error
        candidates = candidates[approx[candidates] + bound + np.float32(_SLACK) >= floor]
        exact = snap.vectors[candidates] @ query
        return [
            (i, _distance(s)) for i, s in _select(candidates, exact, snap.owners, k, per_subject)
        ]


def _distance(score: float) -> float:
    return float(min(max(1.0 - score, 0.0), 2.0))


def _approximate(
    snap: _Snapshot, query: np.ndarray, scores: Scores = onnx_scores
) -> tuple[np.ndarray, np.float32]:
    """Integer scores of every row, and the query's rounding error ``e``: a row's score is
    within ``r + (1 + r) e`` of the exact one (``r``: the row's residual), given exact sums."""
    q_scale = max(float(np.abs(query).max()), 1e-12) / QUERY_MAX
    q_codes = np.rint(query / q_scale)
    q_error = float(np.linalg.norm(query - q_scale * q_codes))
    q_bytes = (q_codes + 128).astype(np.uint8)[None]
    parts = [scores(q_bytes, block) for block in snap.blocks]
    raw = np.concatenate(parts)[: snap.n] if len(parts) > 1 else parts[0][: snap.n]
    # (p + 128).c = p.c + 128 sum(c): a zero point in the graph would take a slower kernel
    np.subtract(raw, snap.offsets, out=raw)
    approx = raw.astype(np.float32)
    approx *= snap.scales
    approx *= np.float32(q_scale)
    # |v.q - (s c).(t p)| <= |(v - s c).q| + |(s c).(q - t p)| <= r + (1 + r) e
    return approx, np.float32(q_error)


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    """Indexes of the ``count`` highest scores (any order). The ``count``-th highest maximum of
    runs of 64 scores is at most the ``count``-th highest score, so only the rows at or above it
    (few) are partitioned, not all."""
    n = len(scores)
    if count * 64 >= n:
        return np.argpartition(scores, n - count)[n - count :] if count < n else np.arange(n)
    whole = n // 64 * 64
    maxima = scores[:whole].reshape(-1, 64).max(axis=1)
    if whole < n:
        maxima = np.append(maxima, scores[whole:].max())
    floor = np.partition(maxima, len(maxima) - count)[len(maxima) - count]
    rows = np.flatnonzero(scores >= floor)
    return rows[np.argpartition(scores[rows], len(rows) - count)[len(rows) - count :]]


def _select(
    rows: np.ndarray, scores: np.ndarray, owners: np.ndarray, k: int, per_subject: bool
) -> list[tuple[int, float]]:
    """The best ``k`` of ``rows`` by exact score (ties by row), or the best row of each of the
    best ``k`` subjects: ``(row, score)``, best first."""
    order = np.lexsort((rows, -scores))
    if not per_subject:
        return [(int(rows[i]), float(scores[i])) for i in order[:k]]
    chosen: dict[int, tuple[int, float]] = {}
    for i in order:
        owner = int(owners[rows[i]])
        if owner not in chosen:
            chosen[owner] = (int(rows[i]), float(scores[i]))
            if len(chosen) == k:
                break
    return list(chosen.values())


def _grow(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.empty((capacity, *array.shape[1:]), array.dtype)
    grown[: len(array)] = array
    return grown
