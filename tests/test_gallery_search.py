"""The in-memory search: its int8 pass plus error bounds gives exactly the float32 answer."""

from __future__ import annotations

import numpy as np
import pytest

from facematch.gallery.search import BLOCK, FaceMatrix


def unit(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, 512)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact(distances, owners, k, per_subject) -> list[int]:
    """The rows a float scan answers, from every row's distance (ties by row)."""
    head = min(len(distances), 12 * k)  # enough rows for k subjects of at most 3 faces
    rows = np.argpartition(distances, head - 1)[:head] if head < len(distances) else None
    rows = np.arange(len(distances)) if rows is None else rows
    order = rows[np.lexsort((rows, distances[rows]))]
    if not per_subject:
        return [int(i) for i in order[:k]]
    best: dict[int, int] = {}
    for i in order:
        best.setdefault(int(owners[i]), int(i))
    return list(best.values())[:k]


def test_nearest_equals_a_float_scan_across_blocks_and_appends():
    count = BLOCK + 3000  # the second append crosses into a second block
    vectors = unit(count, seed=1)
    # clusters of near-duplicates, where an approximate search would go wrong
    vectors[100:140] = vectors[100] + 0.02 * unit(40, seed=2)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owners = np.arange(count) // 3
    matrix = FaceMatrix()
    half = count // 2 + 11
    for rows in (slice(0, half), slice(half, count)):
        matrix.append(
            list(range(rows.start, rows.stop)),
            [f"s{o}" for o in owners[rows]],
            vectors[rows],
        )
    assert matrix.n == count and len(matrix.blocks) == 2
    rng = np.random.default_rng(3)
    probes = [vectors[i] + 0.3 * unit(1, seed=int(i))[0] for i in rng.integers(0, count, 20)]
    probes += [vectors[105], vectors[count - 1]]
    stored = vectors.astype(np.float64)
    for probe in probes:
        probe = (probe / np.linalg.norm(probe)).astype(np.float32)
        distances = 1.0 - stored @ probe.astype(np.float64)
        for k, per_subject in ((1, False), (10, False), (7, True), (50, True)):
            expected = exact(distances, owners, k, per_subject)
            found = matrix.nearest(probe, k, per_subject)
            assert [row for row, _ in found] == expected
            np.testing.assert_allclose([d for _, d in found], distances[expected], atol=1e-5)


def test_an_empty_matrix_finds_nothing_and_k_beyond_its_size_finds_all():
    matrix = FaceMatrix()
    assert matrix.nearest(unit(1, 0)[0], 5, False) == []
    matrix.append([7, 9], ["a", "a"], unit(2, 4))
    assert sorted(row for row, _ in matrix.nearest(unit(1, 5)[0], 5, False)) == [0, 1]
    assert len(matrix.nearest(unit(1, 5)[0], 5, True)) == 1


@pytest.mark.parametrize("count", [1_000, 20_000])
def test_every_query_near_a_stored_face_finds_the_float64_answer(count):
    """The case that returned nothing on AVX2 CPUs with 8-bit codes: 200 probes, each near a
    stored face, with clusters of near-duplicates, at one and at two blocks."""
    vectors = unit(count, seed=count)
    for start in (100, count - 60):  # two clusters of near-duplicates
        vectors[start : start + 40] = vectors[start] + 0.02 * unit(40, seed=start)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owners = np.arange(count) // 3
    matrix = FaceMatrix()
    matrix.append(list(range(count)), [f"s{o}" for o in owners], vectors)
    rng = np.random.default_rng(count + 1)
    near = vectors[rng.integers(0, count, 200)] + 0.3 * unit(200, seed=count + 2) / np.sqrt(2)
    probes = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    all_distances = 1.0 - vectors.astype(np.float64) @ probes.astype(np.float64).T
    for probe, distances in zip(probes, all_distances.T, strict=True):
        for k, per_subject in ((1, False), (10, False), (7, True)):
            expected = exact(distances, owners, k, per_subject)
            found = matrix.nearest(probe, k, per_subject)
            assert [row for row, _ in found] == expected
            np.testing.assert_allclose([d for _, d in found], distances[expected], atol=1e-5)


def test_the_shipped_scores_graph_is_the_one_the_preparation_tool_builds():
    from deployment_utils.graphs import gallery_scores_model
    from facematch.gallery.search import SCORES_GRAPH

    assert SCORES_GRAPH.read_bytes() == gallery_scores_model()
