"""Where a request's CPU goes under load: py-spy samples Gunicorn's workers while clients post
LFW pairs, and each sample is put in the stage of the request it belongs to.

Starts one Gunicorn at facematch's defaults (``--setting key=value`` overrides them), warms it
up, then for ``--seconds`` runs ``--clients`` clients posting ``/photo_match`` pairs
(``benchmarking_utils.load``) while ``py-spy record`` samples the workers (by default
``--nonblocking``: Python's frames, the workers never paused; ``--native``: ONNX Runtime's and
libc's frames too, the workers paused at each sample): the first worker as a flame graph
(``--svg``), every other as raw stacks, which give the stage table (so at least two workers).
Sampling slows the server (LFW, 8 clients, 2 cores: about 10 requests/s at ``--rate 20``
against 14 unsampled), so the table gives shares and CPU, not throughput. The server's CPU time
over the window (user + system of the master and its workers, from ``/proc``) divided by the
requests answered is the CPU a request; each stage gets its share of the sampled CPU (samples
of a waiting thread, ``WAITS``, left out). ``STAGES`` names the frames that make a stage, and
the ``latency_ms`` field of the answer that includes its time ("" where none does).

    python -m benchmarking_utils.profile_load --clients 8 --seconds 30 --rate 20 \
        --svg docs/profile_load.svg --out docs/results/profile_load.json

py-spy (``requirements-dev.txt``) must be on ``PATH`` and may attach to the workers (root, or
``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarking_utils.common import machine, write_json
from benchmarking_utils.inputs import pair_photos
from benchmarking_utils.load import REPO, Server, run_load, start
from deployment_utils.lfw import GET_LFW, lfw_dir, read_pairs

#: (stage, the answer's ``latency_ms`` field that includes it, frames a stack must all hold);
#: a sample goes to the first stage whose frames its stack holds.
STAGES = (
    ("decode (Pillow)", "decode", ("decoding.py",)),
    ("detection: downscale to 640 px", "detection", ("search_image",)),
    ("detection: P-Net in ONNX Runtime", "detection", ("pnet_stage", "onnx_runtime.py")),
    ("detection: P-Net pyramid, boxes, NMS", "detection", ("pnet_stage",)),
    ("detection: R-Net in ONNX Runtime", "detection", ("rnet_stage", "onnx_runtime.py")),
    ("detection: R-Net crops, boxes, NMS", "detection", ("rnet_stage",)),
    ("detection: O-Net in ONNX Runtime", "detection", ("onet_stage", "onnx_runtime.py")),
    ("detection: O-Net crops, boxes, NMS", "detection", ("onet_stage",)),
    ("detection: summed-area table, rest", "detection", ("mtcnn_search.py",)),
    ("detection: ranking, 160x160 crops", "detection", ("faces_from",)),
    ("embedding: InceptionResnetV1 in ONNX Runtime", "embedding", ("embedding.py", "onnx_runtime")),
    ("embedding: batch, mirror, combine", "embedding", ("embedding.py",)),
    ("face quality measures", "", ("quality.py",)),
    ("multipart form parsing", "", ("formparser.py",)),
    ("multipart form parsing", "", ("multipart.py",)),
    ("metrics record, Prometheus", "", ("request_metrics.py",)),
    ("JSON answer", "", ("json/",)),
    ("compute pool: hand-off, slot waits", "", ("compute_slots.py",)),
    ("compute pool: hand-off, slot waits", "", ("concurrent/futures",)),
    ("Gunicorn: HTTP parsing, socket I/O", "", ("gunicorn/http",)),
    ("Flask, Werkzeug: routing, request, response", "", ("flask/",)),
    ("Flask, Werkzeug: routing, request, response", "", ("werkzeug/",)),
    ("Gunicorn: worker loop, accept, keep-alive", "", ("gunicorn/",)),
    ("ONNX Runtime threads outside a run (pool)", "", ("onnxruntime",)),
)
OTHER = ("other (interpreter, allocator, threads)", "")
#: Frames of a thread that waits (a semaphore, a queue, a lock, epoll): with ``--native`` py-spy
#: samples a paused process and counts such threads as running; they are left out here.
WAITS = (
    "SemLock_acquire",
    "SimpleQueue_get",
    "select_epoll_poll",
    "lock_PyThread_acquire_lock",
    "take_gil",
    "Condition.wait",
)


def stage_of(stack: str) -> tuple[str, str]:
    """The (stage, ``latency_ms`` field) of one sampled stack (frames joined by ``;``)."""
    for name, field, frames in STAGES:
        if all(frame in stack for frame in frames):
            return name, field
    return OTHER


def read_raw(path: Path) -> Counter:
    """py-spy's raw (collapsed) output: samples per stack."""
    counts: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stack] += int(count)
    return counts


def stage_table(counts: Counter, cpu_ms_per_request: float) -> list[dict]:
    """Per stage: its share of the samples and the CPU milliseconds a request it stands for."""
    stages: Counter = Counter()
    fields = {}
    for stack, count in counts.items():
        if any(frame in stack for frame in WAITS):
            continue
        name, field = stage_of(stack)
        stages[name] += count
        fields[name] = field
    total = sum(stages.values()) or 1
    return [
        {
            "stage": name,
            "latency_field": fields[name],
            "samples": count,
            "share": round(count / total, 4),
            "cpu_ms_per_request": round(cpu_ms_per_request * count / total, 1),
        }
        for name, count in stages.most_common()
    ]


def record(
    pid: int, seconds: float, fmt: str, out: Path, rate: int, native: bool
) -> subprocess.Popen:
    """py-spy sampling ``pid`` for ``seconds`` into ``out``: with native frames (pausing the
    process at each sample), or Python's frames alone without pausing it."""
    argv = [
        shutil.which("py-spy") or "py-spy", "record", "--native" if native else "--nonblocking",
        "--pid", str(pid), "--duration", str(round(seconds)), "--rate", str(rate),
        "--format", fmt, "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| stage | share of samples | CPU ms a request | in `latency_ms` |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        seen = row["latency_field"] or "**not seen**"
        lines.append(
            f"| {row['stage']} | {100 * row['share']:.1f}% | {row['cpu_ms_per_request']:.1f}"
            f" | {seen} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", default=[], help="key=value (repeatable)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup", type=int, default=20, help="uncounted requests first")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples a second")
    parser.add_argument(
        "--native",
        action="store_true",
        help="native frames too (ONNX Runtime's, libc's); py-spy then pauses the workers at "
        "each sample, which slows them (LFW, 8 clients: 3.5 requests/s instead of about 14)",
    )
    parser.add_argument("--pairs", type=int, default=20, help="distinct DevTest pairs to cycle")
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--svg", type=Path, help="the first worker's flame graph")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarking_utils.profile_load", *(argv or sys.argv[1:])])
    if not (args.lfw / "pairsDevTest.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    photos = pair_photos(args.lfw, read_pairs(args.lfw / "pairsDevTest.txt"), None, args.pairs)
    work = REPO / "benchmark_results" / "profile"
    work.mkdir(parents=True, exist_ok=True)
    server: Server = start("profiled:" + ",".join(args.setting), work)
    try:
        run_load(server, photos, 1, 1, args.warmup, {})  # the warm-up, and a second's load
        workers = sorted(server.gunicorn.workers())
        svg = args.svg or work / "flame.svg"
        raws = [work / f"worker-{pid}.txt" for pid in workers[1:]]
        spies = [record(workers[0], args.seconds, "flamegraph", svg, args.rate, args.native)]
        spies += [
            record(p, args.seconds, "raw", r, args.rate, args.native)
            for p, r in zip(workers[1:], raws)
        ]
        time.sleep(1)  # py-spy attaches
        load = run_load(server, photos, args.clients, args.seconds, 0, {})
        cpu = load["server_cpu_s"]
        for spy in spies:
            _, errors = spy.communicate(timeout=120)
            if spy.returncode:
                raise SystemExit(f"py-spy failed: {errors.decode(errors='replace')[-2000:]}")
    finally:
        server.stop()
    counts = sum((read_raw(r) for r in raws), Counter())
    served = len(load["timeline"])
    cpu_ms = 1000 * cpu / max(1, served)
    rows = stage_table(counts, cpu_ms)
    print(
        f"{served} answers in {load['seconds']} s ({load['throughput_rps']} req/s, "
        f"p50 {load['latency_ms']['p50']} ms, p99 {load['latency_ms']['p99']} ms, "
        f"{load['errors']} errors); server CPU {cpu:.1f} s = {cpu_ms:.1f} ms a request"
    )
    print(markdown(rows))
    write_json(
        args.out,
        {
            "date": datetime.datetime.now().isoformat(timespec="minutes"),
            "machine": machine(),
            "command": command,
            "settings": args.setting,
            "native": args.native,
            "clients": args.clients,
            "seconds": load["seconds"],
            "answers": served,
            "errors": load["errors"],
            "throughput_rps": load["throughput_rps"],
            "latency_ms": load["latency_ms"],
            "server_cpu_s": round(cpu, 2),
            "cpu_ms_per_request": round(cpu_ms, 1),
            "samples": sum(counts.values()),
            "stages": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
