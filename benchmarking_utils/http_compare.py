"""What a user sees over HTTP: the baseline at PyTorch's default threads against facematch at
its defaults through a real Gunicorn, in one run, plus facematch's start time and footprint.

Both servers run side by side on 127.0.0.1 (``benchmarking_utils.local_gunicorn``): the baseline
(``benchmarking_utils.baseline``, the original design's Flask app) in one sync worker with
PyTorch's default thread count, and facematch with no ``FACEMATCH_*`` serving variable set (its
defaults: 2 workers of 2 threads, preloaded). For each input (two 4032x3024 photos, two
1280x720, two LFW 250x250 by default; the large ones are LFW photos on generated backgrounds),
``--warmup`` requests to each server are not counted, then ``--repeats`` rounds send one
``/photo_match`` to the baseline and one to facematch in turn, so both see the same load; the
figures are medians, with facematch's own stage times (``latency_ms``) and the load average.

Start time is from ``Popen`` of the Gunicorn master to the first answered ``/photo_match`` (the
server waits for nothing else); footprint is the PSS of the master and its workers (sum of
``Pss`` in ``/proc/<pid>/smaps_rollup``) after 20 requests. ``--before DIR`` measures another
checkout's server (e.g. the commit before this work) the same way in the same run.

    python -m benchmarking_utils.http_compare --out docs/results/http_compare.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from benchmarking_utils.common import machine, write_json
from benchmarking_utils.inputs import Photo, pair_photos, parse_size
from benchmarking_utils.load import memory
from benchmarking_utils.local_gunicorn import REPO, LocalGunicorn
from deployment_utils.lfw import GET_LFW, lfw_dir, read_pairs

BASELINE = "benchmarking_utils.baseline:create_app()"
BASELINE_ENV = {"FACEMATCH_WORKERS": "1", "FACEMATCH_THREADS": "1", "FACEMATCH_PRELOAD": "false"}
TARGETS = {"4032x3024": 30.0, "1280x720": 8.0, "lfw": 5.0}
STAGES = ("decode", "detection", "embedding", "scoring", "total")


def post(url: str, a: Photo, b: Photo) -> tuple[float, dict]:
    """One ``/photo_match`` of ``a`` and ``b``: wall milliseconds and the JSON answer."""
    files = {"reference": ("a.jpg", a.data), "sample": ("b.jpg", b.data)}
    start = time.perf_counter()
    response = requests.post(url + "/photo_match", files=files, timeout=300)
    ms = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    return ms, response.json()


def compare_size(
    baseline: str, service: str, photos: list, warmup: int, repeats: int, variants: dict
) -> dict:
    """Interleaved requests of one input size; medians, the ratio, facematch's stages (and each
    variant server's median and ratio)."""
    pair = photos[0]
    for _ in range(warmup):
        for url in (baseline, service, *variants.values()):
            post(url, *pair)
    base, served, stages = [], [], []
    others: dict[str, list[float]] = {name: [] for name in variants}
    other_stages: dict[str, list[dict]] = {name: [] for name in variants}
    load = [os.getloadavg()[0]]
    for i in range(repeats):
        a, b = photos[i % len(photos)]
        base.append(post(baseline, a, b)[0])
        ms, body = post(service, a, b)
        served.append(ms)
        stages.append(body["latency_ms"])
        for name, url in variants.items():
            ms, body = post(url, a, b)
            others[name].append(ms)
            other_stages[name].append(body["latency_ms"])
    load.append(os.getloadavg()[0])
    base_ms, service_ms = float(np.median(base)), float(np.median(served))
    return {
        "image_size": [pair[0].width, pair[0].height],
        "baseline_ms": round(base_ms, 1),
        "facematch_ms": round(service_ms, 1),
        "speedup": round(base_ms / service_ms, 2),
        "facematch_stage_median_ms": _stage_medians(stages),
        "variants": {
            name: {
                "ms": round(float(np.median(v)), 1),
                "speedup": round(base_ms / float(np.median(v)), 2),
                "stage_median_ms": _stage_medians(other_stages[name]),
            }
            for name, v in others.items()
        },
        "baseline_all_ms": [round(v, 1) for v in base],
        "facematch_all_ms": [round(v, 1) for v in served],
        "load_average_1min": [round(v, 2) for v in load],
    }


def _stage_medians(latencies: list[dict]) -> dict:
    """The median of each stage of the answers' ``latency_ms``."""
    return {s: round(float(np.median([r[s] for r in latencies])), 1) for s in STAGES}


def start_and_footprint(
    repo: Path, photos: list, log_dir: Path, label: str, large: list | None = None, env=None
) -> dict:
    """Start a default facematch server from ``repo``: seconds from process start to the first
    answered ``/photo_match``, then total PSS (MiB) of master and workers after 20 requests
    (and, with ``large`` photos, again after 20 more of those: what a worker keeps after them);
    ``env``: FACEMATCH_ variables of a variant (default: none, the defaults)."""
    a, b = photos[0]
    started = time.perf_counter()
    log = log_dir / f"start-{len(list(log_dir.glob('start-*')))}.log"
    server = LocalGunicorn(log, env or {}, repo=repo)
    try:
        while True:
            try:
                post(server.url, a, b)
                break
            except (requests.RequestException, RuntimeError):
                if server.process.poll() is not None:
                    raise RuntimeError(f"{label} server exited:\n{server.log()}") from None
                time.sleep(0.05)
        first = time.perf_counter() - started
        for i in range(19):
            post(server.url, *photos[i % len(photos)])
        mem = memory(server.pid)
        for i in range(20 if large else 0):
            post(server.url, *large[i % len(large)])
        after_large = memory(server.pid) if large else None
    finally:
        server.stop()
    processes = [mem["master"], *mem["workers"]]
    return {
        "server": label,
        "repo": str(repo),
        "commit": _commit(repo),
        "start_to_first_match_s": round(first, 2),
        "pss_total_mib": round(sum(p["pss_mib"] for p in processes), 1),
        "pss_mib": {
            "master": mem["master"]["pss_mib"],
            "workers": [w["pss_mib"] for w in mem["workers"]],
        },
        "rss_mib": {
            "master": mem["master"]["rss_mib"],
            "workers": [w["rss_mib"] for w in mem["workers"]],
        },
        "pss_total_after_large_mib": _total_pss(after_large) if after_large else None,
    }


def _total_pss(mem: dict) -> float:
    return round(sum(p["pss_mib"] for p in [mem["master"], *mem["workers"]]), 1)


def _commit(repo: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip()


def table(results: dict, footprints: list[dict]) -> str:
    rows = [
        "| input | baseline ms | facematch ms | speed-up (target) | facematch decode / detection"
        " / embedding / total ms | load average |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for size, r in results.items():
        s = r["facematch_stage_median_ms"]
        target = TARGETS.get(size)
        rows.append(
            f"| {size} | {r['baseline_ms']:.0f} | {r['facematch_ms']:.0f} | "
            f"**{r['speedup']:.1f}x**{f' (>= {target:g}x)' if target else ''} | "
            f"{s['decode']:.0f} / {s['detection']:.0f} / {s['embedding']:.0f} / {s['total']:.0f}"
            f" | {r['load_average_1min'][0]:.1f}-{r['load_average_1min'][1]:.1f} |"
        )
        for name, v in r["variants"].items():
            s = v["stage_median_ms"]
            rows.append(
                f"| {size}, {name} | | {v['ms']:.0f} | {v['speedup']:.1f}x | "
                f"{s['decode']:.0f} / {s['detection']:.0f} / {s['embedding']:.0f} / "
                f"{s['total']:.0f} | |"
            )
    rows += [
        "",
        "| server | commit | start to first /photo_match s | total PSS MiB (master; workers) "
        "| total PSS MiB after 20 large |",
    ]
    rows.append("| --- | --- | --- | --- | --- |")
    for f in footprints:
        workers = ", ".join(f"{w:.0f}" for w in f["pss_mib"]["workers"])
        rows.append(
            f"| {f['server']} | {f['commit']} | {f['start_to_first_match_s']:.2f} | "
            f"{f['pss_total_mib']:.0f} ({f['pss_mib']['master']:.0f}; {workers}) | "
            f"{f['pss_total_after_large_mib'] or '':} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--sizes", default="4032x3024,1280x720,lfw")
    parser.add_argument("--repeats", type=int, default=5, help="counted rounds per size")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted requests per server")
    parser.add_argument("--before", type=Path, action="append", default=[], help="another checkout")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:VAR=value,... another facematch server (FACEMATCH_ variables) in the same loop",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTest.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    pairs = read_pairs(args.lfw / "pairsDevTest.txt")
    inputs = {
        s: pair_photos(args.lfw, pairs, parse_size(s), args.repeats) for s in args.sizes.split(",")
    }
    log_dir = Path(tempfile.mkdtemp(prefix="http-compare-"))
    variant_env = {}
    for text in args.variant:
        name, _, spec = text.partition(":")
        variant_env[name] = dict(item.split("=", 1) for item in filter(None, spec.split(",")))
    small = inputs["lfw"] if "lfw" in inputs else next(iter(inputs.values()))
    large = inputs.get("4032x3024")
    servers = [("defaults", REPO, {})]
    servers += [(f"before: {repo}", repo, {}) for repo in args.before]
    servers += [(name, REPO, env) for name, env in variant_env.items()]
    footprints = [
        start_and_footprint(repo, small, log_dir, label, large, env) for label, repo, env in servers
    ]
    baseline = LocalGunicorn(log_dir / "baseline.log", BASELINE_ENV, app=BASELINE)
    service = LocalGunicorn(log_dir / "facematch.log", {})
    variants = {
        name: LocalGunicorn(log_dir / f"{name}.log", env) for name, env in variant_env.items()
    }
    try:
        for server in (baseline, service, *variants.values()):
            server.wait_until_up(300)
        urls = {name: server.url for name, server in variants.items()}
        results = {
            size: compare_size(baseline.url, service.url, photos, args.warmup, args.repeats, urls)
            for size, photos in inputs.items()
        }
    finally:
        for server in (baseline, service, *variants.values()):
            server.stop()
    report = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "machine": machine(),
        "commit": _commit(REPO),
        "command": "python -m benchmarking_utils.http_compare " + " ".join(argv or sys.argv[1:]),
        "baseline": {"app": BASELINE, "env": BASELINE_ENV, "torch_threads": "PyTorch's default"},
        "facematch": "wsgi:app at its defaults (no FACEMATCH_* serving variable set)",
        "variants": args.variant,
        "results": results,
        "footprint": footprints,
    }
    print(table(results, footprints))
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
