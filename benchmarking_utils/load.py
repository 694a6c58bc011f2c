"""Concurrent clients against Gunicorn: throughput, latency percentiles, errors, memory per worker.

Either point it at a running server (``--url``, and ``--pid`` of the Gunicorn master to read its
workers' memory), or let it start one Gunicorn per ``--scenario`` on a free local port:
``NAME:key=value,...`` where ``app=service`` (default, ``wsgi:app``) or ``app=baseline``
(``benchmarking_utils.baseline``, the original pipeline), ``repo=DIR`` serves another checkout
(e.g. an export of the commit before a change: ``git archive``), and the other keys are settings
(``workers``, ``threads``, ``preload``, ``torch_threads``, ``embed_backend``, ...). All scenario
servers start first; then each round runs every scenario in turn for ``--seconds`` with
``--clients`` threads posting ``/photo_match`` pairs back to back, so slow drifts of a shared
machine hit all scenarios alike. The server's CPU a request (user + system of the master and its
workers, from ``/proc``, over the requests sent) depends less on other jobs than throughput does.
Memory: RSS, PSS and private (USS) bytes of the master and each worker, the highest seen while
the load ran. Ratios are against the first scenario.

    python -m benchmarking_utils.load --clients 4 --seconds 60 --rounds 2 \\
        --scenario baseline:app=baseline,workers=1,threads=1 \\
        --scenario current:workers=2,threads=2 --out docs/results/load.json --plot docs/load.png
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from benchmarking_utils.common import machine, write_json
from benchmarking_utils.inputs import Photo, pair_photos, parse_size
from benchmarking_utils.local_gunicorn import GunicornFailed, LocalGunicorn
from deployment_utils.lfw import GET_LFW, lfw_dir, read_pairs
from facematch.config import PREFIX, Settings

REPO = Path(__file__).resolve().parents[1]
APPS = {"service": "wsgi:app", "baseline": "benchmarking_utils.baseline:create_app()"}


@dataclass
class Server:
    """One Gunicorn started for a scenario (or a running one given by URL and master pid)."""

    name: str
    url: str
    pid: int | None = None
    gunicorn: LocalGunicorn | None = None
    settings: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.gunicorn is not None:
            self.gunicorn.stop(grace=40)


def start(scenario: str, log_dir: Path) -> Server:
    """Start Gunicorn for ``NAME:app=...,key=value`` and wait until ``/ping`` answers."""
    name, _, spec = scenario.partition(":")
    values = dict(item.partition("=")[::2] for item in filter(None, spec.split(",")))
    app = APPS[values.pop("app", "service")]
    repo = Path(values.pop("repo", REPO)).resolve()
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = set(values) - known
    if unknown:
        raise SystemExit(f"unknown settings {sorted(unknown)} in scenario {scenario!r}")
    env = {PREFIX + k.upper(): v for k, v in values.items()}
    env[f"{PREFIX}LOG_LEVEL"] = "warning"
    gunicorn = LocalGunicorn(
        log_dir / f"gunicorn-{name}.log",
        env,
        app=app,
        extra_args=["--access-logfile", "/dev/null"],
        repo=repo,
    )
    settings = {"app": app, **values} | ({"repo": str(repo)} if repo != REPO else {})
    server = Server(name, gunicorn.url, gunicorn.pid, gunicorn, settings)
    try:
        gunicorn.wait_until_up(seconds=300)
    except GunicornFailed as error:
        server.stop()
        raise SystemExit(f"gunicorn for {name}: {error}") from None
    return server


def memory(pid: int) -> dict:
    """RSS, PSS and private bytes (MiB) of a process and of its child processes."""

    def one(p: int) -> dict | None:
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            return None
        kb = {}
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                kb[parts[0].rstrip(":")] = int(parts[1])
        private = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
        return {
            "rss_mib": round(kb.get("Rss", 0) / 1024, 1),
            "pss_mib": round(kb.get("Pss", 0) / 1024, 1),
            "private_mib": round(private / 1024, 1),
        }

    return {"master": one(pid), "workers": [m for m in map(one, children(pid)) if m]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process and its child processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def children(pid: int) -> list[int]:
    """The process ids of a process's children."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return sorted(set(found))


def run_load(
    server: Server,
    photos: list[tuple[Photo, Photo]],
    clients: int,
    seconds: float,
    warmup: int,
    headers: dict,
) -> dict:
    """``clients`` threads posting pairs back to back for ``seconds`` after ``warmup`` requests."""
    records: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    peak: dict = {}

    def post(session: requests.Session, i: int) -> tuple[float, int]:
        a, b = photos[i % len(photos)]
        files = {"reference": ("a.jpg", a.data), "sample": ("b.jpg", b.data)}
        start = time.perf_counter()
        try:
            status = session.post(
                server.url + "/photo_match", files=files, headers=headers, timeout=300
            ).status_code
        except requests.RequestException:
            status = 0
        return (time.perf_counter() - start) * 1000, status

    with requests.Session() as session:
        for i in range(warmup):
            post(session, i)
    began = time.perf_counter()
    deadline = began + seconds

    def client(index: int) -> None:
        with requests.Session() as session:
            i = index * 7
            while time.perf_counter() < deadline:
                ms, status = post(session, i)
                with lock:
                    records.append((time.perf_counter() - began, ms, status))
                i += 1

    def sample_memory() -> None:
        """Keep the sample with the most worker RSS in total."""
        while server.pid and time.perf_counter() < deadline:
            now = memory(server.pid)
            total = sum(w["rss_mib"] for w in now["workers"])
            if total >= peak.get("total", -1):
                peak.update(now, total=total)
            time.sleep(1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=sample_memory))
    cpu_before = cpu_seconds(server.pid) if server.pid else 0.0
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = cpu_seconds(server.pid) - cpu_before if server.pid else 0.0
    elapsed = max((r[0] for r in records), default=seconds)
    ok = [r[1] for r in records if r[2] == 200]
    latencies = np.array(ok) if ok else np.zeros(1)
    return {
        "requests": len(records),
        "errors": sum(r[2] != 200 for r in records),
        "seconds": round(elapsed, 1),
        "throughput_rps": round(len(ok) / elapsed, 3),
        "server_cpu_s": round(cpu, 2),
        "latency_ms": {
            f"p{q}": round(float(np.percentile(latencies, q)), 1) for q in (50, 90, 95, 99)
        }
        | {"max": round(float(latencies.max()), 1)},
        "memory_peak": peak,
        "timeline": [(round(t, 2), round(ms, 1)) for t, ms, status in records if status == 200],
    }


def merge(rounds: list[dict]) -> dict:
    """Combine the rounds of one scenario: total requests over total time, pooled latencies."""
    lat = np.array([ms for r in rounds for _, ms in r["timeline"]] or [0.0])
    ok = sum(len(r["timeline"]) for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    workers = [r["memory_peak"].get("workers", []) for r in rounds]
    return {
        "rounds": len(rounds),
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "throughput_rps": round(ok / seconds, 3),
        "throughput_per_round": [r["throughput_rps"] for r in rounds],
        "server_cpu_ms_per_request": round(
            1000
            * sum(r.get("server_cpu_s", 0) for r in rounds)
            / max(1, sum(r["requests"] for r in rounds)),
            1,
        ),
        "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 95, 99)}
        | {"max": round(float(lat.max()), 1)},
        "memory_peak": {
            "master": rounds[-1]["memory_peak"].get("master"),
            "workers": max(workers, key=len),
        },
    }


def plot(results: dict, path: Path, clients: int) -> None:
    """Throughput per scenario and the latency distribution of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3), dpi=80)
    bars = left.bar(names, [results[n]["summary"]["throughput_rps"] for n in names])
    for bar, n in zip(bars, names):
        left.annotate(
            f"{results[n]['summary']['throughput_rps']:.2f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    left.set(ylabel="requests / s", title=f"/photo_match, {clients} clients")
    left.tick_params(axis="x", labelsize=7, labelrotation=20)
    for n in names:
        lat = np.sort([ms for r in results[n]["rounds"] for _, ms in r["timeline"]])
        if lat.size:
            right.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=n)
    right.set(xscale="log", xlabel="latency ms", ylabel="fraction of requests", title="latency CDF")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server instead of --scenario")
    parser.add_argument("--pid", type=int, help="with --url: the Gunicorn master's pid (memory)")
    parser.add_argument("--api-key", help="sent as X-API-Key")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="NAME:app=service|baseline,key=value,... (repeatable)",
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=1, help="alternate scenarios this often")
    parser.add_argument("--warmup", type=int, default=10, help="uncounted requests per round")
    parser.add_argument("--size", default="lfw", help="lfw or WxH (generated large photos)")
    parser.add_argument("--pairs", type=int, default=20, help="distinct DevTest pairs to cycle")
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTest.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    photos = pair_photos(
        args.lfw, read_pairs(args.lfw / "pairsDevTest.txt"), parse_size(args.size), args.pairs
    )
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    servers: list[Server] = []
    try:
        if args.url:
            servers.append(Server("server", args.url.rstrip("/"), args.pid))
        for scenario in args.scenario:
            servers.append(start(scenario, REPO / "benchmark_results" / "load"))
        results = {s.name: {"settings": s.settings, "rounds": []} for s in servers}
        for round_index in range(args.rounds):
            for server in servers:
                print(
                    f"round {round_index + 1}/{args.rounds}: {server.name} for "
                    f"{args.seconds:g} s with {args.clients} clients",
                    flush=True,
                )
                results[server.name]["rounds"].append(
                    run_load(server, photos, args.clients, args.seconds, args.warmup, headers)
                )
    finally:
        for server in servers:
            server.stop()
    first = next(iter(results.values()))
    for entry in results.values():
        entry["summary"] = merge(entry["rounds"])
    for entry in results.values():
        entry["summary"]["throughput_ratio_vs_first"] = round(
            entry["summary"]["throughput_rps"] / first["summary"]["throughput_rps"], 2
        )
    print(table(results))
    report = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "machine": machine(),
        "command": "python -m benchmarking_utils.load " + " ".join(argv or sys.argv[1:]),
        "clients": args.clients,
        "seconds": args.seconds,
        "inputs": args.size,
        "scenarios": {n: {"settings": e["settings"], **e["summary"]} for n, e in results.items()},
    }
    write_json(args.out, report)
    if args.plot:
        plot(results, args.plot, args.clients)
    return 0


def table(results: dict) -> str:
    rows = [
        "| scenario | req/s | ratio | server CPU ms a request | p50 ms | p95 ms | p99 ms | "
        "errors | worker RSS MiB | worker PSS MiB | worker private MiB |",
        "| --- " * 11 + "|",
    ]
    for name, entry in results.items():
        s = entry["summary"]
        workers = s["memory_peak"]["workers"] or [{}]

        def fmt(key: str) -> str:
            return ", ".join(f"{w.get(key, 0):.0f}" for w in workers)

        rows.append(
            f"| {name} | {s['throughput_rps']:.2f} | {s['throughput_ratio_vs_first']:.2f}x"
            f" | {s['server_cpu_ms_per_request']:.1f} | {s['latency_ms']['p50']:.0f}"
            f" | {s['latency_ms']['p95']:.0f} | {s['latency_ms']['p99']:.0f} | {s['errors']}"
            f" | {fmt('rss_mib')} | {fmt('pss_mib')} | {fmt('private_mib')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
