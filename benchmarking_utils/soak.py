"""Worker memory over a fixed number of requests: RSS of each Gunicorn worker before and after.

Starts Gunicorn the way ``benchmarking_utils.load`` does (its ``start`` and ``memory``), sends
``--warmup`` requests, reads every worker's RSS / PSS / private memory, sends ``--requests`` more
from ``--clients`` threads (a mix: /photo_match, /cached_match, /embeddings and an upload that is
refused with 415, so the error path is exercised too), and reads memory again. Exits 1 if any
worker grew by more than ``--max-growth-mib``, if any request failed or answered 5xx, or if a
worker was replaced on the way (the same pids must be there before and after).

    python -m benchmarking_utils.soak --requests 1000 --clients 4 \\
        --scenario soak:workers=2,threads=2 --out docs/results/soak.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests

from benchmarking_utils.common import machine
from benchmarking_utils.load import memory, start
from deployment_utils.lfw import GET_LFW, lfw_dir

PAIR = ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Aaron_Peirsol/Aaron_Peirsol_0002.jpg")


def worker_pids(master: int) -> list[int]:
    pids: set[int] = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        pids.update(int(c) for c in (task / "children").read_text().split())
    return sorted(pids)


def worker_memory(master: int) -> dict[int, dict]:
    """Memory of each worker, by pid (``load.memory`` gives them in pid order)."""
    return dict(zip(worker_pids(master), memory(master)["workers"]))


def calls(url: str, lfw: Path, headers: dict) -> list[tuple[str, str, dict, int]]:
    reference, sample = ((lfw / "images" / name).read_bytes() for name in PAIR)
    stored = requests.post(
        url + "/embeddings", files={"photo": ("a.jpg", reference)}, headers=headers, timeout=120
    )
    stored.raise_for_status()
    return [
        (
            "photo_match",
            "/photo_match",
            {"reference": ("a.jpg", reference), "sample": ("b.jpg", sample)},
            200,
        ),
        (
            "cached_match",
            "/cached_match",
            {"reference": ("r.json", stored.content), "sample": ("b.jpg", sample)},
            200,
        ),
        ("embeddings", "/embeddings", {"photo": ("b.jpg", sample)}, 200),
        (
            "refused",
            "/photo_match",
            {"reference": ("a.jpg", reference), "sample": ("t.jpg", b"not an image")},
            415,
        ),
    ]


def send(url: str, mix: list, count: int, clients: int, headers: dict) -> dict:
    """Exactly ``count`` requests from ``clients`` keep-alive sessions, cycling through ``mix``."""
    tickets = itertools.count()
    lock = threading.Lock()
    statuses: Counter = Counter()
    unexpected: list[str] = []
    errors: list[str] = []
    latencies: list[float] = []

    def client() -> None:
        with requests.Session() as session:
            while (n := next(tickets)) < count:
                name, path, files, expected = mix[n % len(mix)]
                began = time.perf_counter()
                try:
                    response = session.post(url + path, files=files, headers=headers, timeout=300)
                except requests.RequestException as error:
                    with lock:
                        errors.append(f"{name}: {type(error).__name__}")
                    continue
                ms = (time.perf_counter() - began) * 1000
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == expected:
                        latencies.append(ms)
                    else:
                        unexpected.append(f"{name}: {response.status_code}")

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    lat = np.array(latencies or [0.0])
    return {
        "requests": count,
        "seconds": round(seconds, 1),
        "throughput_rps": round(count / seconds, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "connection_errors": len(errors),
        "unexpected": len(unexpected),
        "examples": (errors + unexpected)[:5],
        "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)}
        | {"max": round(float(lat.max()), 1)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        default="soak:workers=2,threads=2",
        help="as in benchmarking_utils.load: NAME:key=value,...",
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-growth-mib", type=float, default=64.0)
    parser.add_argument("--api-key", help="sent as X-API-Key (when the server needs one)")
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not (args.lfw / "images").is_dir():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    server = start(args.scenario, Path(tempfile.mkdtemp(prefix="facematch-soak-")))
    try:
        mix = calls(server.url, args.lfw, headers)
        warmup = send(server.url, mix, args.warmup, args.clients, headers)
        before = worker_memory(server.pid)
        measured = send(server.url, mix, args.requests, args.clients, headers)
        after = worker_memory(server.pid)
    finally:
        server.stop()
    growth = {
        pid: round(after[pid]["rss_mib"] - before[pid]["rss_mib"], 1)
        for pid in before
        if pid in after
    }
    result = {
        "scenario": args.scenario,
        "clients": args.clients,
        "warmup": warmup,
        "measured": measured,
        "workers_before": {str(p): m for p, m in before.items()},
        "workers_after": {str(p): m for p, m in after.items()},
        "rss_growth_mib": {str(p): g for p, g in growth.items()},
        "max_growth_bound_mib": args.max_growth_mib,
        "machine": machine(),
    }
    problems = []
    if set(before) != set(after):
        problems.append(f"workers changed: {sorted(before)} -> {sorted(after)}")
    if any(g > args.max_growth_mib for g in growth.values()):
        problems.append(f"RSS grew beyond {args.max_growth_mib} MiB: {growth}")
    for phase in (warmup, measured):
        if phase["server_errors"] or phase["connection_errors"] or phase["unexpected"]:
            problems.append(f"failed requests: {phase['examples']}")
    result["problems"] = problems
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
