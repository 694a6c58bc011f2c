"""The int8 portability check: embed the shipped crops with the built graphs, compare files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarking_utils.int8_cpus import compare, main


def test_compare_reports_each_graph_across_files_and_int8_against_float32():
    rng = np.random.default_rng(0)
    float32 = rng.normal(size=(5, 8))
    float32 /= np.linalg.norm(float32, axis=1, keepdims=True)
    other = float32.copy()
    other[0] = -other[0]  # one vector turned around on the other CPU
    report = compare({"float32": float32, "int8": float32}, {"int8": other})
    assert report["int8: first vs second"] == {"min": -1.0, "mean": pytest.approx(0.6)}
    assert report["first: int8 vs float32"] == {"min": 1.0, "mean": 1.0}
    assert "second: int8 vs float32" not in report  # the second file has no float32 vectors


def test_embedding_the_crops_with_the_built_graphs_keeps_int8_close_to_float32(tmp_path, capsys):
    out = tmp_path / "here.npz"
    assert main(["embed", "--out", str(out), "--count", "3"]) == 0
    vectors = dict(np.load(out))
    assert vectors["int8"].shape == vectors["float32"].shape == (3, 512)
    capsys.readouterr()
    assert main(["compare", str(out), str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["int8: first vs second"]["min"] == pytest.approx(1.0)
    assert 0.99 < report["first: int8 vs float32"]["min"] < 1.0
