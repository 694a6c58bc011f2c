"""The benchmark commands run end to end on a few LFW pairs and write what they measured.

Each runs as the README runs it (``python -m benchmarking_utils.<command>``), with counts small
enough for the test suite; the figures themselves are not asserted, only that they were taken.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def assert_ordered(stats: dict) -> None:
    assert 0 < stats["median"] <= stats["p95"] <= stats["max"]


def test_latency_reports_each_stage_after_the_warmup_for_both_routes(run_benchmark, tmp_path):
    report = run_benchmark(
        "latency",
        tmp_path / "latency.json",
        "--sizes",
        "lfw",
        "--endpoint",
        "both",
        "--requests",
        "3",
        "--warmup",
        "1",
        "--plot",
        str(tmp_path / "latency.png"),
    )
    assert [r["endpoint"] for r in report["results"]] == ["photo_match", "cached_match"]
    for result in report["results"]:
        assert result["image_sizes"] == ["250x250"] and result["errors"] == 0
        stages = result["stages_ms"]
        assert {"decode", "detection", "embedding", "scoring", "total"} <= set(stages)
        assert all(stats["n"] == 3 for stats in stages.values())
        assert_ordered(stages["total"])
    assert (tmp_path / "latency.png").stat().st_size > 0


def test_compare_times_the_baseline_and_the_service_on_the_same_pairs(run_benchmark, tmp_path):
    report = run_benchmark(
        "compare",
        tmp_path / "compare.json",
        "--sizes",
        "lfw",
        "--pairs",
        "2",
        "--warmup",
        "1",
        "--plot",
        str(tmp_path / "compare.png"),
    )
    (result,) = report["results"]
    wall = result["wall_ms"]
    for name in ("baseline", "current /photo_match", "current /cached_match"):
        assert wall[name]["n"] == 2
        assert_ordered(wall[name])
    ratios = result["candidates"]["current"]
    assert ratios["speedup_photo_match"] == pytest.approx(
        wall["baseline"]["median"] / wall["current /photo_match"]["median"], rel=0.01
    )
    rate = report["embedding_rate"]
    assert rate["matmul_peak_gflops"] > 0 and rate["per_face"]["baseline batch 1"]["ms"] > 0
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_load_drives_a_real_gunicorn_and_reports_throughput_and_worker_memory(
    run_benchmark, tmp_path
):
    report = run_benchmark(
        "load",
        tmp_path / "load.json",
        "--scenario",
        "current:workers=1,threads=1",
        "--clients",
        "2",
        "--seconds",
        "3",
        "--warmup",
        "1",
        "--pairs",
        "2",
        "--plot",
        str(tmp_path / "load.png"),
    )
    scenario = report["scenarios"]["current"]
    assert scenario["requests"] > 0 and scenario["errors"] == 0
    assert scenario["throughput_rps"] > 0
    assert 0 < scenario["latency_ms"]["p50"] <= scenario["latency_ms"]["max"]
    assert 0 < scenario["server_cpu_ms_per_request"] < 60_000
    (worker,) = scenario["memory_peak"]["workers"]
    assert worker["rss_mib"] > worker["private_mib"] > 0
    assert (tmp_path / "load.png").stat().st_size > 0


def test_accuracy_measures_each_config_with_an_engine_built_from_its_options(
    run_benchmark, tmp_path
):
    report = run_benchmark(
        "accuracy",
        tmp_path / "accuracy.json",
        "--limit",
        "10",
        "--config",
        "plain:flip_embeddings=false",
        "--config",
        "flipped:flip_embeddings=true,margin=20",
    )
    configs = report["configs"]
    assert configs["plain"]["settings"]["flip_embeddings"] is False
    flipped = configs["flipped"]["settings"]
    assert (flipped["flip_embeddings"], flipped["margin"]) == (True, 20)
    for entry in configs.values():
        view1 = entry["view1"]
        assert 0.5 < view1["devtest_accuracy"] <= 1 and view1["images_without_face"] == 0
        assert view1["default_threshold"] == 0.6397
        assert 0.5 < view1["devtest_accuracy_at_default_threshold"] <= 1


def test_http_compare_reports_the_users_view_start_time_and_footprint(run_benchmark, tmp_path):
    report = run_benchmark(
        "http_compare",
        tmp_path / "http.json",
        "--sizes",
        "lfw",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--variant",
        "float:FACEMATCH_EMBED_BACKEND=onnx,FACEMATCH_FLIP_EMBEDDINGS=false",
    )
    lfw_row = report["results"]["lfw"]
    assert lfw_row["image_size"] == [250, 250] and len(lfw_row["baseline_all_ms"]) == 2
    assert lfw_row["speedup"] == pytest.approx(
        lfw_row["baseline_ms"] / lfw_row["facematch_ms"], rel=0.01
    )
    stages = lfw_row["facematch_stage_median_ms"]
    assert 0 < stages["detection"] < stages["total"] and stages["embedding"] > 0
    float32 = lfw_row["variants"]["float"]
    assert float32["ms"] > 0 and float32["stage_median_ms"]["embedding"] > 0
    footprints = {f["server"]: f for f in report["footprint"]}
    assert set(footprints) == {"defaults", "float"}
    for f in footprints.values():
        assert 0 < f["start_to_first_match_s"] < 120
        assert len(f["pss_mib"]["workers"]) == 2 and f["pss_total_mib"] > f["pss_mib"]["master"]
        assert f["pss_total_after_large_mib"] is None  # no 4032x3024 input asked for


def test_kernel_speed_times_each_fast_kernel_against_float32_with_the_cpu_flags(tmp_path, capsys):
    from benchmarking_utils import kernel_speed

    out = tmp_path / "kernels.json"
    assert kernel_speed.main(["--rows", "2000", "--repeats", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["checks"]) == {"embedder", "gallery_search"}
    assert all(check["check"] == "passed" for check in report["checks"].values())
    assert isinstance(report["cpu_flags"], list) and report["machine"]
    [search] = report["search"]
    for figures in (search, report["embedder"]):
        assert figures["int8_ms"] > 0 and figures["float32_ms"] > 0
        assert figures["float32_over_int8"] == round(figures["float32_ms"] / figures["int8_ms"], 2)
    assert search["rows"] == 2000 and search["served_ms"] > 0 and report["embedder"]["batch"] == 2
    assert "gallery search, 2,000 faces" in capsys.readouterr().out
