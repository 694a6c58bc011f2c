"""The Grafana dashboard's panels as one PNG, for people without Grafana.

Reads the points the bridge wrote back from the database and draws, with matplotlib: requests/s
per node, p50/p95/p99 latency by stage, match rate per node, the distance distribution against
the threshold, detection probability by photo role, and errors/s by error code.

    python -m benchmarking_utils.monitoring_report --since 1h --out monitoring.png

Connection settings come from FACEMATCH_INFLUX_URL/TOKEN/ORG/BUCKET/MEASUREMENT. ``--backend
influxdb`` (the default) queries InfluxDB 2 with Flux; ``--backend victoria-metrics`` reads a
VictoriaMetrics that took the bridge's InfluxDB writes (what the tests use) through its export
API, where each field is stored as the series ``<measurement>_<field>``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facematch.config import Settings
from facematch.observability.message import ROLES, TAGS

STAGES = ("detection", "embedding", "total")
QUANTILES = (50, 95, 99)
BACKENDS = ("influxdb", "victoria-metrics")


@dataclass(frozen=True)
class StoredPoint:
    """One point as read back: epoch seconds, the tags, the numeric fields."""

    time: float
    tags: dict[str, str]
    fields: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    backend: str
    url: str
    token: str
    org: str
    bucket: str
    measurement: str


# --- reading ------------------------------------------------------------------------------


def read_points(source: Source, start: float, end: float) -> list[StoredPoint]:
    """The points of ``source.measurement`` with ``start <= time <= end``, oldest first."""
    if source.backend == "victoria-metrics":
        points = read_victoria_metrics(source.url, source.measurement, start, end)
    else:
        points = read_influxdb(source, start, end)
    return sorted(points, key=lambda p: p.time)


def read_victoria_metrics(
    url: str, measurement: str, start: float, end: float, timeout: float = 30.0
) -> list[StoredPoint]:
    """Rebuild points from VictoriaMetrics' export: one series per field, joined on tags+time."""
    prefix = measurement + "_"
    query = urllib.parse.urlencode(
        {
            "match[]": f'{{__name__=~"{re.escape(prefix)}.+"}}',
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
        }
    )
    with urllib.request.urlopen(
        f"{url.rstrip('/')}/api/v1/export?{query}", timeout=timeout
    ) as response:
        lines = response.read().splitlines()
    joined: dict[tuple, dict[str, float]] = defaultdict(dict)
    for line in lines:
        if not line.strip():
            continue
        series = json.loads(line)
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        if not name.startswith(prefix):
            continue
        tags = tuple(sorted((k, v) for k, v in labels.items() if k in TAGS))
        for value, stamp in zip(series["values"], series["timestamps"]):
            joined[(stamp, tags)][name[len(prefix) :]] = float(value)
    return [
        StoredPoint(time=stamp / 1000, tags=dict(tags), fields=fields)
        for (stamp, tags), fields in joined.items()
    ]


def flux_query(source: Source, start: float, end: float) -> str:
    """Every point of the measurement in the range, one row per point (fields as columns)."""

    def stamp(seconds: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))

    return (
        f"from(bucket: {json.dumps(source.bucket)})\n"
        f"  |> range(start: {stamp(start)}, stop: {stamp(end + 1)})\n"
        f"  |> filter(fn: (r) => r._measurement == {json.dumps(source.measurement)})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
    )


def read_influxdb(source: Source, start: float, end: float) -> list[StoredPoint]:
    """Query InfluxDB 2 with Flux (pivoted: one record per point)."""
    from influxdb_client import InfluxDBClient

    with InfluxDBClient(
        url=source.url, token=source.token, org=source.org, timeout=60_000
    ) as client:
        tables = client.query_api().query(flux_query(source, start, end), org=source.org)
    points = []
    skip = {"result", "table", "_start", "_stop", "_time", "_measurement"}
    for table in tables:
        for record in table.records:
            values = record.values
            tags = {k: str(values[k]) for k in TAGS if values.get(k) is not None}
            fields = {
                k: float(v)
                for k, v in values.items()
                if k not in skip and k not in TAGS and isinstance(v, (int, float))
            }
            points.append(StoredPoint(time=record.get_time().timestamp(), tags=tags, fields=fields))
    return points


# --- the panels' numbers ------------------------------------------------------------------


@dataclass(frozen=True)
class Bins:
    """Equal time buckets over the points' span (``edges`` in epoch seconds)."""

    edges: np.ndarray

    @classmethod
    def over(cls, points: list[StoredPoint], count: int | None = None) -> Bins:
        """About eight points per bucket on average, 4 to 60 buckets, at least 1 s wide."""
        if count is None:
            count = min(60, max(4, len(points) // 8))
        start = min(p.time for p in points)
        end = max(p.time for p in points)
        width = max((end - start) / count, 1.0)
        return cls(edges=start + width * np.arange(int(np.ceil((end - start) / width)) + 2))

    @property
    def width(self) -> float:
        return float(self.edges[1] - self.edges[0])

    @property
    def centers(self) -> np.ndarray:
        return self.edges[:-1] + self.width / 2

    def index(self, t: float) -> int:
        return min(int((t - self.edges[0]) // self.width), len(self.edges) - 2)


def requests_per_second(points: list[StoredPoint], bins: Bins) -> dict[str, np.ndarray]:
    """Per node: requests in each bucket divided by the bucket's width."""
    out: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(bins.centers)))
    for p in points:
        out[p.tags.get("node", "?")][bins.index(p.time)] += 1
    return {node: counts / bins.width for node, counts in sorted(out.items())}


def latency_quantiles(points: list[StoredPoint], bins: Bins) -> dict[tuple[str, int], np.ndarray]:
    """(stage, q) -> the q-th percentile of latency_<stage>_ms per bucket (NaN when empty)."""
    grouped: dict[str, list[list[float]]] = {s: [[] for _ in bins.centers] for s in STAGES}
    for p in points:
        for stage in STAGES:
            value = p.fields.get(f"latency_{stage}_ms")
            if value is not None:
                grouped[stage][bins.index(p.time)].append(value)
    return {
        (stage, q): np.array([np.percentile(v, q) if v else np.nan for v in grouped[stage]])
        for stage in STAGES
        for q in QUANTILES
    }


def match_rate(points: list[StoredPoint], bins: Bins) -> dict[str, np.ndarray]:
    """Per node: the share of decided requests that matched, per bucket (NaN when none)."""
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(bins.centers)))
    counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(bins.centers)))
    for p in points:
        if "matched" in p.fields:
            node = p.tags.get("node", "?")
            sums[node][bins.index(p.time)] += p.fields["matched"]
            counts[node][bins.index(p.time)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            node: np.where(counts[node] > 0, sums[node] / counts[node], np.nan)
            for node in sorted(sums)
        }


def errors_per_second(points: list[StoredPoint], bins: Bins) -> dict[str, np.ndarray]:
    """Per error code: failed requests per second in each bucket."""
    out: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(bins.centers)))
    for p in points:
        if p.fields.get("error") == 1:
            out[p.tags.get("error_code", "none")][bins.index(p.time)] += 1
    return {code: counts / bins.width for code, counts in sorted(out.items())}


@dataclass(frozen=True)
class Summary:
    """The headline numbers printed under the title (and returned to callers)."""

    requests: int
    nodes: list[str]
    decided: int
    matches: int
    errors: int
    distances: list[float]
    thresholds: list[float]


def summarize(points: list[StoredPoint]) -> Summary:
    decided = [p for p in points if "matched" in p.fields]
    return Summary(
        requests=len(points),
        nodes=sorted({p.tags.get("node", "?") for p in points}),
        decided=len(decided),
        matches=sum(int(p.fields["matched"]) for p in decided),
        errors=sum(1 for p in points if p.fields.get("error") == 1),
        distances=[p.fields["distance"] for p in points if "distance" in p.fields],
        thresholds=sorted({p.fields["threshold"] for p in points if "threshold" in p.fields}),
    )


# --- drawing ------------------------------------------------------------------------------


def render(points: list[StoredPoint], out: Path, title: str = "facematch monitoring") -> Summary:
    """Draw the six panels into ``out`` (PNG); the summary of what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    summary = summarize(points)
    fig, axes = plt.subplots(3, 2, figsize=(15, 13), constrained_layout=True)
    rate = 100 * summary.matches / summary.decided if summary.decided else float("nan")
    fig.suptitle(
        f"{title}\n{summary.requests} requests on {len(summary.nodes)} node(s), "
        f"match rate {rate:.1f}% of {summary.decided} decisions, "
        f"{summary.errors} errors",
        fontsize=13,
    )
    if not points:
        for ax in axes.flat:
            ax.text(0.5, 0.5, "no data in this range", ha="center", va="center")
            ax.set_axis_off()
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return summary

    bins = Bins.over(points)
    times = np.array([np.datetime64(int(t * 1000), "ms") for t in bins.centers])

    def time_axis(ax, ylabel: str, heading: str) -> None:
        ax.set_title(heading)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.grid(alpha=0.3)

    ax = axes[0, 0]
    for node, values in requests_per_second(points, bins).items():
        ax.plot(times, values, label=node, drawstyle="steps-mid")
    time_axis(ax, "requests/s", "Requests per second, per node")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    colors = dict(zip(STAGES, ("tab:blue", "tab:orange", "tab:green")))
    styles = dict(zip(QUANTILES, (":", "--", "-")))
    for (stage, q), values in latency_quantiles(points, bins).items():
        ax.plot(
            times,
            values,
            color=colors[stage],
            linestyle=styles[q],
            marker=".",
            label=f"{stage} p{q}",
        )
    time_axis(ax, "ms", "Latency p50 / p95 / p99 by stage")
    ax.legend(fontsize=7, ncol=3)

    ax = axes[1, 0]
    for node, values in match_rate(points, bins).items():
        ax.plot(times, values * 100, marker="o", label=node)
    ax.set_ylim(-5, 105)
    time_axis(ax, "% of decisions", "Match rate, per node")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    matched = [
        p.fields["distance"]
        for p in points
        if "distance" in p.fields and p.fields.get("matched") == 1
    ]
    different = [
        p.fields["distance"]
        for p in points
        if "distance" in p.fields and p.fields.get("matched") == 0
    ]
    if summary.distances:
        edges = np.linspace(0, max(max(summary.distances), *summary.thresholds, 0.1) * 1.05, 41)
        ax.hist(
            [matched, different],
            bins=edges,
            stacked=True,
            label=["match", "no match"],
            color=["tab:green", "tab:red"],
        )
    for threshold in summary.thresholds:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_title("Distance distribution against the threshold")
    ax.set_xlabel("distance")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)

    ax = axes[2, 0]
    probabilities = {
        role: [p.fields[f"probability_{role}"] for p in points if f"probability_{role}" in p.fields]
        for role in ROLES
    }
    low = min([min(v) for v in probabilities.values() if v] + [0.9])
    edges = np.linspace(min(low, 0.9), 1.0, 41)
    for role, values in probabilities.items():
        if values:
            ax.hist(
                values,
                bins=edges,
                histtype="step",
                linewidth=1.5,
                label=f"{role} (min {min(values):.3f})",
            )
    ax.set_title("Detection probability of the face used, by photo role")
    ax.set_xlabel("probability")
    ax.set_ylabel("faces")
    ax.legend(fontsize=8)

    ax = axes[2, 1]
    codes = errors_per_second(points, bins)
    for code, values in codes.items():
        ax.plot(times, values, label=code, drawstyle="steps-mid")
    if not codes:
        ax.text(0.5, 0.5, "no errors", ha="center", va="center", transform=ax.transAxes)
    time_axis(ax, "errors/s", "Error rate by error code")
    if codes:
        ax.legend(fontsize=8)

    fig.savefig(out, dpi=90)
    plt.close(fig)
    return summary


# --- command line -------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``7d`` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 7d)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarking_utils.monitoring_report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("monitoring-report.png"))
    parser.add_argument(
        "--since",
        type=parse_duration,
        default=3600.0,
        help="how far back from now (90s, 15m, 2h, 7d; default 1h)",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="influxdb")
    parser.add_argument(
        "--url", default=settings.influx_url, help="database URL (default FACEMATCH_INFLUX_URL)"
    )
    parser.add_argument(
        "--node", action="append", default=[], help="only these nodes (repeatable; default all)"
    )
    parser.add_argument("--title", default="facematch monitoring")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("no database URL: set FACEMATCH_INFLUX_URL or pass --url")
    source = Source(
        backend=args.backend,
        url=args.url,
        token=settings.influx_token,
        org=settings.influx_org,
        bucket=settings.influx_bucket,
        measurement=settings.influx_measurement,
    )
    end = time.time()
    points = read_points(source, end - args.since, end)
    if args.node:
        points = [p for p in points if p.tags.get("node") in args.node]
    summary = render(points, args.out, args.title)
    print(
        f"{args.out}: {summary.requests} requests, {summary.decided} decisions "
        f"({summary.matches} matches), {summary.errors} errors, nodes {summary.nodes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
