"""The PNG report command: reads the bridge's points back from the database and draws the
dashboard's panels with numbers that match what was written."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

from benchmarking_utils import monitoring_report as report
from facematch.observability.bridge import influx_point
from facematch.observability.message import build_message, to_point
from facematch.observability.record import FaceSummary, Latency, RequestRecord
from tests.support import REPO

START = time.time() - 300


def records() -> list[tuple[str, RequestRecord]]:
    """60 requests over 60 s on two nodes: node-a matches 2 of 3 decisions, node-b 1 of 3;
    every tenth request fails with no_face, every fifteenth is an embedding."""
    out = []
    for i in range(60):
        node = "node-a" if i % 2 == 0 else "node-b"
        started = START + i
        if i % 10 == 9:
            rec = RequestRecord(
                endpoint="/photo_match",
                started=started,
                status=422,
                error_code="no_face",
                model="casia-webface",
                faces=[
                    FaceSummary("reference", 1, 0.999, None, 250, 250),
                    FaceSummary("sample", 0, None, None, 250, 250),
                ],
                latency=Latency(detection=30.0, total=35.0),
            )
        elif i % 15 == 14:
            rec = RequestRecord(
                endpoint="/embeddings",
                started=started,
                model="casia-webface",
                faces=[FaceSummary("photo", 1, 0.95, None, 200, 200)],
                latency=Latency(detection=20.0, embedding=10.0, total=32.0),
            )
        else:
            matched = (i % 3 != 0) if node == "node-a" else (i % 3 == 0)
            rec = RequestRecord(
                endpoint="/photo_match",
                started=started,
                match=matched,
                distance=0.3 if matched else 0.9,
                threshold=0.63,
                metric="cosine",
                model="casia-webface",
                faces=[
                    FaceSummary("reference", 1, 0.99, None, 250, 250),
                    FaceSummary("sample", 1, 0.97, None, 250, 250),
                ],
                latency=Latency(detection=40.0 + i, embedding=20.0, total=70.0 + i),
            )
        out.append((node, rec))
    return out


@pytest.fixture
def filled(database):
    points = [
        influx_point(to_point(build_message(rec, node=node)), "facematch")
        for node, rec in records()
    ]
    with InfluxDBClient(url=database.url, token="test", org="facematch") as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="facematch", record=points)
    database.export("facematch_pid")  # flush
    return database


def test_reader_rebuilds_every_point_with_its_tags_and_fields(filled):
    source = report.Source(
        "victoria-metrics", filled.url, "", "facematch", "facematch", "facematch"
    )
    points = report.read_points(source, START - 1, time.time())
    expected = [to_point(build_message(rec, node=node)) for node, rec in records()]
    assert len(points) == 60
    for got, want in zip(points, expected):
        assert round(got.time * 1000) == want.time_ns // 1_000_000
        assert got.tags == want.tags
        assert got.fields == pytest.approx({**want.fields, "pid": got.fields["pid"]})


def test_panel_numbers_match_what_was_written(filled):
    source = report.Source(
        "victoria-metrics", filled.url, "", "facematch", "facematch", "facematch"
    )
    points = report.read_points(source, START - 1, time.time())
    summary = report.summarize(points)
    decided = [(node, rec) for node, rec in records() if rec.match is not None]
    assert (summary.requests, summary.nodes, summary.errors) == (60, ["node-a", "node-b"], 6)
    assert (summary.decided, summary.matches) == (
        len(decided),
        sum(rec.match for _, rec in decided),
    )
    assert summary.thresholds == [0.63]

    bins = report.Bins.over(points)
    rates = report.requests_per_second(points, bins)
    assert {node: round(float(v.sum() * bins.width)) for node, v in rates.items()} == {
        "node-a": 30,
        "node-b": 30,
    }
    errors = report.errors_per_second(points, bins)
    assert list(errors) == ["no_face"]
    assert round(float(errors["no_face"].sum() * bins.width)) == 6
    overall = report.match_rate(points, report.Bins(edges=np.array([START - 1, START + 100])))
    for node in ("node-a", "node-b"):
        mine = [rec.match for n, rec in decided if n == node]
        assert overall[node][0] == pytest.approx(sum(mine) / len(mine))
    quantiles = report.latency_quantiles(
        points, report.Bins(edges=np.array([START - 1, START + 100]))
    )
    totals = [rec.latency.total for _, rec in records()]
    assert quantiles[("total", 50)][0] == pytest.approx(np.percentile(totals, 50))


def test_command_renders_the_report_png(filled, tmp_path):
    out = tmp_path / "report.png"
    env = {
        "PATH": "/usr/bin:/bin",
        "FACEMATCH_INFLUX_URL": filled.url,
        "FACEMATCH_INFLUX_MEASUREMENT": "facematch",
        "MPLCONFIGDIR": str(tmp_path),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarking_utils.monitoring_report",
            "--backend",
            "victoria-metrics",
            "--since",
            "1h",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "60 requests" in result.stdout and "6 errors" in result.stdout
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[0] > 800 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_command_with_no_points_in_range_still_renders(database, tmp_path):
    out = tmp_path / "empty.png"
    env = {
        "PATH": "/usr/bin:/bin",
        "FACEMATCH_INFLUX_URL": database.url,
        "MPLCONFIGDIR": str(tmp_path),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarking_utils.monitoring_report",
            "--backend",
            "victoria-metrics",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "0 requests" in result.stdout
    assert out.stat().st_size > 1000
