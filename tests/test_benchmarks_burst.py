"""The burst accuracy command end to end on a few LFW people (its figures on all of them are in
docs/results/burst_accuracy.json; here only that they were taken and hold together)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

FUSIONS = {"mean", "best", "vote"}


def within(figure: dict) -> bool:
    low, high = figure["ci95"]
    return low <= figure["rate"] <= high


def test_burst_command_measures_every_fusion_and_size_with_intervals(run_benchmark, tmp_path):
    report = run_benchmark(
        "burst_accuracy", tmp_path / "burst.json", "--people", "12", "--rounds", "100"
    )
    assert report["people"] == 12 and report["unknown_people"] == 12
    images = report["images"]
    for size in ("1", "2", "3"):
        verify = report["verify"][size]
        assert set(verify["fusions"]) == FUSIONS
        for figures in verify["fusions"].values():
            assert figures["frr_default"]["trials"] == images
            assert figures["far_default"]["trials"] == 10 * images
            assert all(within(figures[k]) for k in ("frr_default", "far_default"))
        identify = report["identify"][size]
        assert identify["known_probes"] == images - 12 and identify["unknown_probes"] == 12
        assert all(within(f["dir_at_alarm_1pct"]) for f in identify["fusions"].values())
    single = report["verify"]["1"]["fusions"]
    assert single["mean"] == single["best"] == single["vote"]  # one sample: nothing to fuse
    assert report["verify"]["1"]["refused_inconsistent"]["genuine"]["rate"] == 0
    assert 0.9 <= report["verify"]["2"]["mixed_with_stranger_refused"] <= 1
    paired = report["verify"]["paired_differences"]["3"]
    assert set(paired) == FUSIONS and "minus_mean" not in paired["mean"]["frr_default"]
    assert report["commit"] and report["date"] and report["machine"]
    assert report["command"].startswith("python -m benchmarking_utils.burst_accuracy")
