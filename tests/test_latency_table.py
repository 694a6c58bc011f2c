"""The operator's benchmark (``python -m benchmarking_utils.latency --table docs``) prints the
docs' latency table, under a header naming the commit, machine, device and runtimes, so figures
measured on a Pi or a GPU box can be pasted into the docs as they are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarking_utils.latency import docs_table

REPO = Path(__file__).resolve().parents[1]


def docs_header() -> str:
    """The header row of the latency table in docs/performance.md."""
    lines = (REPO / "docs" / "performance.md").read_text().splitlines()
    return next(line for line in lines if line.startswith("| input | route | decode |"))


def stats(median: float, p95: float = 0.0, top: float = 0.0) -> dict:
    return {"n": 3, "median": median, "p95": p95 or median, "max": top or median}


def test_docs_table_has_the_docs_columns_and_one_row_per_input_and_route():
    result = {
        "inputs": "lfw",
        "endpoint": "photo_match",
        "image_sizes": ["250x250"],
        "stages_ms": {
            "decode": stats(0.94),
            "detection": stats(35.6),
            "embedding": stats(53.44),
            "scoring": stats(0.1),
            "total": stats(91.6, 103.2, 112.7),
            "client_wall": stats(93.0),
        },
    }
    empty = {**result, "endpoint": "cached_match", "stages_ms": {"total": {"n": 0}}}
    lines = docs_table([result, empty]).splitlines()
    assert lines[0] == docs_header()
    assert lines[2:] == ["| 250x250 | `/photo_match` | 0.9 | 35.6 | 53.4 | 91.6 | 103.2 | 112.7 |"]


def test_the_latency_command_prints_the_docs_table_with_device_and_commit(lfw, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarking_utils.latency",
            "--lfw",
            str(lfw),
            "--requests",
            "2",
            "--warmup",
            "1",
            "--table",
            "docs",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "FACEMATCH_DEVICE": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "commit `" in lines[0] and "--table docs" in lines[0]
    assert "device: cpu;" in lines[1] and "backends: embed onnx-int8, detect onnx" in lines[1]
    assert docs_header() in lines
    row = lines[lines.index(docs_header()) + 2]
    assert row.startswith("| 250x250 | `/photo_match` | ") and row.count("|") == 9
