"""Whether a server gives back the memory of requests at the limits (issue 24): a default
facematch under Gunicorn, a battery of legitimate and refused 40 MP requests, then the total PSS
of master and workers (``Pss`` of ``/proc/<pid>/smaps_rollup``) each half second for 5 s after
the last answer.

The battery, sent by ``--clients`` clients at once: ten 16-bit grey PNGs of 7300x5470 (blank,
refused with 422), then ``--rounds`` rounds of one ``/photo_match`` of two 39 MP JPEGs of a face
(an LFW photo upscaled to 7200x5400, quality 90) and one 16-bit PNG. The total PSS is also read
after 20 LFW pairs before it, and the latency of a 4032x3024 pair and an LFW pair after it.

    python -m benchmarking_utils.memory_return --out docs/results/memory_return.json
"""

from __future__ import annotations

import argparse
import datetime
import io
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from benchmarking_utils.common import machine, write_json
from benchmarking_utils.inputs import pair_photos
from benchmarking_utils.load import memory
from benchmarking_utils.local_gunicorn import REPO, LocalGunicorn
from deployment_utils.lfw import GET_LFW, lfw_dir, read_pairs

#: The largest photo the defaults accept (40 MP) and a 39 MP one of a face.
PNG_SIZE, JPEG_SIZE = (7300, 5470), (7200, 5400)
TARGET_MIB = 400


def big_jpeg(lfw: Path, name: str) -> bytes:
    """The LFW photo ``name`` upscaled to ``JPEG_SIZE``, a quality-90 JPEG (about 2 MB)."""
    with Image.open(lfw / "images" / name) as face:
        big = face.convert("RGB").resize(JPEG_SIZE, Image.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def grey16_png() -> bytes:
    """A blank 16-bit grey PNG of ``PNG_SIZE`` (a few hundred KB: it decodes to 76 MiB)."""
    pixels = np.full(PNG_SIZE[::-1], 0x8000, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def total_pss(pid: int) -> tuple[float, list[float]]:
    """Total PSS (MiB) of the master ``pid`` and its workers, and each worker's RSS."""
    mem = memory(pid)
    total = sum(p["pss_mib"] for p in [mem["master"], *mem["workers"]])
    return round(total, 1), [w["rss_mib"] for w in mem["workers"]]


def send(url: str, request: tuple[str, dict, int]) -> float:
    """One request (path, files, expected status); its wall milliseconds."""
    path, files, status = request
    start = time.perf_counter()
    response = requests.post(url + path, files=files, timeout=600)
    if response.status_code != status:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    return (time.perf_counter() - start) * 1000


def battery(jpegs: tuple[bytes, bytes], png: bytes, rounds: int) -> list[tuple[str, dict, int]]:
    """Ten refused 16-bit PNGs, then ``rounds`` of a pair of big JPEGs and one PNG."""
    refused = ("/embeddings", {"photo": ("p.png", png)}, 422)
    pair = ("/photo_match", {"reference": ("r.jpg", jpegs[0]), "sample": ("s.jpg", jpegs[1])}, 200)
    return [refused] * 10 + [pair, refused] * rounds


def watch(pid: int, seconds: float = 5.0) -> list[tuple[float, float, list[float]]]:
    """(seconds since now, total PSS, each worker's RSS) every half second for ``seconds``."""
    start, seen = time.perf_counter(), []
    while (since := time.perf_counter() - start) <= seconds:
        seen.append((round(since, 1), *total_pss(pid)))
        time.sleep(0.5)
    return seen


def run(lfw: Path, rounds: int, clients: int, env: dict, log_dir: Path) -> dict:
    """Start a server with ``env``; 20 LFW pairs, 20 4032x3024 pairs (PSS 5 s after), the
    battery (PSS each half second for 5 s after), then 5 4032x3024 pairs 1.5 s apart."""
    pairs = read_pairs(lfw / "pairsDevTest.txt")
    small = pair_photos(lfw, pairs, None, 20)
    large = pair_photos(lfw, pairs, (4032, 3024), 10)
    jpegs = (big_jpeg(lfw, small[0][0].name), big_jpeg(lfw, small[0][1].name))
    requests_sent = battery(jpegs, grey16_png(), rounds)
    server = LocalGunicorn(log_dir / f"server-{time.monotonic_ns()}.log", env)
    try:
        server.wait_until_up(300)

        def pair(a, b):
            files = {"reference": ("a.jpg", a.data), "sample": ("b.jpg", b.data)}
            return send(server.url, ("/photo_match", files, 200))

        lfw_ms = [pair(a, b) for a, b in small]
        after_lfw, _ = total_pss(server.pid)
        large_ms = [pair(a, b) for a, b in large * 2]
        after_large = watch(server.pid)[-1][1]
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            battery_ms = list(pool.map(lambda r: send(server.url, r), requests_sent))
        seconds = time.perf_counter() - start
        watched = watch(server.pid)
        sparse_ms = []
        for a, b in large[:5]:
            time.sleep(1.5)
            sparse_ms.append(pair(a, b))
    finally:
        server.stop()
    return {
        "env": env,
        "pss_after_20_lfw_mib": after_lfw,
        "pss_5s_after_20_4032x3024_mib": after_large,
        "battery_requests": len(requests_sent),
        "battery_s": round(seconds, 1),
        "battery_ms_median": round(float(np.median(battery_ms))),
        "after_last_answer": [
            {"s": s, "pss_total_mib": pss, "worker_rss_mib": rss} for s, pss, rss in watched
        ],
        "pss_total_5s_mib": watched[-1][1],
        "met": watched[-1][1] < TARGET_MIB and after_large < TARGET_MIB,
        "latency_ms_median": {
            "lfw pairs in a row (last 15)": round(float(np.median(lfw_ms[5:]))),
            "4032x3024 pairs in a row (last 15)": round(float(np.median(large_ms[5:]))),
            "4032x3024 pairs 1.5 s apart": round(float(np.median(sparse_ms))),
        },
    }


def latency_ab(lfw: Path, variants: list[dict], rounds: int, log_dir: Path) -> dict:
    """Median milliseconds of a 4032x3024 pair sent 1.5 s after the last answer (the idle time
    after which a worker trims) and of LFW pairs in a row, the variants' servers running side by
    side and sent to in turn (the same load for each)."""
    pairs = read_pairs(lfw / "pairsDevTest.txt")
    small = pair_photos(lfw, pairs, None, rounds)
    large = pair_photos(lfw, pairs, (4032, 3024), rounds)
    servers = [LocalGunicorn(log_dir / f"ab-{i}.log", env) for i, env in enumerate(variants)]
    sparse, in_a_row = [[] for _ in servers], [[] for _ in servers]
    try:
        for server in servers:
            server.wait_until_up(300)
        for i in range(rounds + 2):  # the first two rounds warm up
            for server, large_ms, small_ms in zip(servers, sparse, in_a_row):
                time.sleep(1.5)
                a, b = large[i % rounds]
                files = {"reference": ("a.jpg", a.data), "sample": ("b.jpg", b.data)}
                ms = send(server.url, ("/photo_match", files, 200))
                a, b = small[i % rounds]
                files = {"reference": ("a.jpg", a.data), "sample": ("b.jpg", b.data)}
                ms_small = [send(server.url, ("/photo_match", files, 200)) for _ in range(3)]
                if i >= 2:
                    large_ms.append(ms)
                    small_ms += ms_small
    finally:
        for server in servers:
            server.stop()
    return {
        str(env or "defaults"): {
            "4032x3024 pair after 1.5 s idle": round(float(np.median(large_ms))),
            "lfw pair in a row": round(float(np.median(small_ms))),
        }
        for env, large_ms, small_ms in zip(variants, sparse, in_a_row)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--variant", action="append", default=[], help="VAR=value,... server environment"
    )
    parser.add_argument(
        "--latency-rounds", type=int, default=0, help="rounds of the side-by-side latency"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTest.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="memory-return-"))
    variants = [dict(i.split("=", 1) for i in filter(None, v.split(","))) for v in args.variant]
    variants = variants or [{}]
    results = [run(args.lfw, args.rounds, args.clients, env, log_dir) for env in variants]
    latency = (
        latency_ab(args.lfw, variants, args.latency_rounds, log_dir) if args.latency_rounds else {}
    )
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    report = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "machine": machine(),
        "commit": commit,
        "command": "python -m benchmarking_utils.memory_return " + " ".join(argv or sys.argv[1:]),
        "results": results,
        "latency_side_by_side_ms": latency,
    }
    write_json(args.out, report)
    for r in results:
        curve = ", ".join(f"{w['s']}s {w['pss_total_mib']:.0f}" for w in r["after_last_answer"])
        print(
            f"{r['env'] or 'defaults'}: PSS after 20 LFW {r['pss_after_20_lfw_mib']:.0f} MiB, "
            f"5 s after 20 4032x3024 {r['pss_5s_after_20_4032x3024_mib']:.0f} MiB; "
            f"battery of {r['battery_requests']} in {r['battery_s']} s; after it: {curve}; "
            f"target < {TARGET_MIB} MiB {'met' if r['met'] else 'missed'}; "
            f"latency {r['latency_ms_median']}"
        )
    for name, figures in latency.items():
        print(f"side by side, {name}: {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
