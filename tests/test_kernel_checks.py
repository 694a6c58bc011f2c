"""The CPU-specific kernels give the exact numbers on the CPU that runs them, and a kernel that
does not is caught by its check. Numerics only (no app, no conftest): the test command also runs
this module under QEMU as an AVX2-only x86, a Pi 4 and a Pi 5 (scripts/emulated_numerics.sh)."""

from __future__ import annotations

import numpy as np
import pytest

from facematch.config import Settings
from facematch.engine.backends.onnx_int8_runtime import (
    PROBE_TOLERANCE,
    int8_graph_path,
    load_probe,
)
from facematch.engine.backends.onnx_runtime import OnnxRuntime
from facematch.engine.kernel_checks import FELL_BACK, PASSED, cosine_error, cpu_flags
from facematch.gallery import search as gallery_search
from facematch.gallery.search import (
    FLOAT_BACKEND,
    INT8_BACKEND,
    FaceMatrix,
    probe_error,
    use_kernel,
)


def pair_saturating(query: np.ndarray, block: np.ndarray) -> np.ndarray:
    """ONNX Runtime's x86 u8 x s8 kernel without VNNI, in NumPy: products added in pairs into
    int16 with saturation (``VPMADDUBSW``), the pairs then added in int32."""
    products = query[0].astype(np.int32)[:, None] * block.astype(np.int32)
    pairs = np.clip(products[0::2] + products[1::2], -32768, 32767)
    return pairs.sum(axis=0, dtype=np.int32)


def int16_accumulating(query: np.ndarray, block: np.ndarray) -> np.ndarray:
    """A broken kernel: the whole sum kept in 16 bits (wrapping), as a narrow accumulator would."""
    return (query[0].astype(np.int16) @ block.astype(np.int16)).astype(np.int32)


@pytest.fixture
def forced_kernel():
    """Check (and use) a given search kernel; the process's own is checked again after."""
    yield use_kernel
    use_kernel(gallery_search.onnx_scores)


def test_this_cpus_search_kernel_gives_exact_integer_sums():
    check = use_kernel(gallery_search.onnx_scores)
    assert (check.check, check.backend, check.max_error) == (PASSED, INT8_BACKEND, 0.0), cpu_flags()


def test_pair_saturation_breaks_8_bit_row_codes_but_not_the_7_bit_ones_the_search_stores():
    rng = np.random.default_rng(0)
    query = np.full((1, 512), 255, np.uint8)
    eight_bit = np.full((512, 4), 127, np.int8)
    exact = query.astype(np.int64) @ eight_bit.astype(np.int64)
    assert (pair_saturating(query, eight_bit) != exact[0]).all()  # the AVX2 bug of 8-bit codes
    assert probe_error(pair_saturating) == 0  # the probe's extreme 7-bit codes stay exact
    matrix = FaceMatrix()
    vectors = rng.standard_normal((300, 512)).astype(np.float32)
    matrix.append(list(range(300)), ["s"] * 300, vectors / np.linalg.norm(vectors, axis=1)[:, None])
    assert np.abs(matrix.blocks[0][:, :300]).max() == gallery_search.ROW_MAX == 63


def test_a_kernel_with_wrong_sums_fails_its_check_and_the_search_answers_in_float32(forced_kernel):
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((2000, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    matrix = FaceMatrix()
    matrix.append(list(range(2000)), [f"s{i // 2}" for i in range(2000)], vectors)
    check = forced_kernel(int16_accumulating)
    assert (check.check, check.backend) == (FELL_BACK, FLOAT_BACKEND)
    assert check.max_error > 0
    for row in rng.integers(0, 2000, 20):
        probe = vectors[row] + 0.5 * rng.standard_normal(512).astype(np.float32) / 22.6
        probe /= np.linalg.norm(probe)
        scores = vectors.astype(np.float64) @ probe.astype(np.float64)
        expected = np.argsort(-scores, kind="stable")[:10]
        found = matrix.nearest(probe, 10, False)
        assert [r for r, _ in found] == expected.tolist()
        np.testing.assert_allclose([d for _, d in found], 1 - scores[expected], atol=1e-5)


def test_a_check_that_fails_logs_one_line_naming_the_kernel_and_the_cpu_flags(
    forced_kernel, caplog
):
    with caplog.at_level("ERROR", logger="facematch.engine.kernel_checks"):
        forced_kernel(int16_accumulating)
    [record] = caplog.records
    assert "gallery_search" in record.getMessage() and "flags:" in record.getMessage()
    assert "serving it in float32 (numpy float32 scan) instead" in record.getMessage()


def test_this_cpus_int8_embedder_matches_float32_on_the_probe_crops():
    graph = int8_graph_path(Settings.from_env().data_path, Settings.from_env().model)
    probe = load_probe(graph)
    if probe is None:
        pytest.skip(f"no int8 graph and probe at {graph}: python -m deployment_utils.graphs build")
    crops, expected = probe
    runtime = OnnxRuntime(graph, threads=1)
    got = np.concatenate([runtime.run(crop[None])[0] for crop in crops])
    error = cosine_error(got, expected)
    assert error <= PROBE_TOLERANCE, (error, cpu_flags())
    print(f"int8 embedder vs float32 on {len(crops)} probe crops: 1 - cosine <= {error:.6f}")


def test_the_embedder_tolerance_separates_a_sound_kernel_from_a_wrong_one():
    rng = np.random.default_rng(1)
    expected = rng.standard_normal((8, 512))
    close = expected + 0.02 * rng.standard_normal((8, 512))  # about cosine 0.9998
    assert cosine_error(close, expected) <= PROBE_TOLERANCE < cosine_error(expected[::-1], expected)
    broken = expected.copy()
    broken[3] = 0.0  # a row of nothing is as wrong as can be, not a division by zero
    assert cosine_error(broken, expected) == pytest.approx(2.0)
