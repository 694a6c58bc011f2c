"""Per-stage latency of the service's routes, in process, over LFW pairs or a folder of photos.

Each request goes through the real Flask route (test client) with the configured engine; the
stage times are the ones the service itself reports in ``latency_ms`` (decode, detection,
embedding, scoring, total), plus the client's wall time. The first ``--warmup`` requests of each
input set are not counted. Per input set: image size, median, p95 and max of every stage.

    python -m benchmarking_utils.latency --sizes lfw,1280x720,1920x1080,4032x3024 \\
        --out docs/results/latency.json --plot docs/latency.png
    python -m benchmarking_utils.latency --photos ~/my-photos --endpoint cached_match

``--table docs`` prints the table the docs show (one row per input set and route, stage medians,
total median/p95/max) under a header naming the date, commit, machine, device and runtimes, ready
to paste into docs/raspberry-pi.md or docs/performance.md: the command an operator runs on a Pi,
a GPU box or any machine to contribute figures.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarking_utils.common import (
    local_settings,
    machine,
    multipart,
    summary,
    write_json,
)
from benchmarking_utils.inputs import Photo, folder_photos, pair_photos, parse_size
from deployment_utils.configs import parse_config
from deployment_utils.lfw import GET_LFW, lfw_dir, read_pairs
from facematch.api.app import create_app
from facematch.engine.engine import FaceEngine

STAGES = ("decode", "detection", "embedding", "scoring", "total")
ENDPOINTS = ("photo_match", "cached_match")


def measure(
    client, photos: list[tuple[Photo, Photo]], endpoint: str, requests: int, warmup: int, label: str
) -> dict:
    """Send ``warmup + requests`` requests cycling over the pairs; summarise the counted ones."""
    references = {}
    if endpoint == "cached_match":
        for a, _ in photos:
            references[a.name] = client.post("/embeddings", data=multipart(photo=a.data)).get_data()
    stages: dict[str, list[float]] = {s: [] for s in (*STAGES, "client_wall")}
    errors = 0
    sizes = set()
    for i in tqdm(range(warmup + requests), desc=f"{label} {endpoint}", unit="req"):
        a, b = photos[i % len(photos)]
        if endpoint == "photo_match":
            data = multipart(reference=a.data, sample=b.data)
        else:
            data = {
                "reference": (io.BytesIO(references[a.name]), "reference.json"),
                **multipart(sample=b.data),
            }
        start = time.perf_counter()
        response = client.post(f"/{endpoint}", data=data)
        wall = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            errors += 1
            continue
        sizes.update({(a.width, a.height), (b.width, b.height)})
        if i < warmup:
            continue
        for stage in STAGES:
            stages[stage].append(response.json["latency_ms"][stage])
        stages["client_wall"].append(wall)
    return {
        "inputs": label,
        "endpoint": endpoint,
        "image_sizes": sorted(f"{w}x{h}" for w, h in sizes),
        "warmup": warmup,
        "errors": errors,
        "stages_ms": {stage: summary(values) for stage, values in stages.items()},
    }


def table(results: list[dict]) -> str:
    rows = [
        "| inputs | endpoint | image size | stage | median ms | p95 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for stage, s in r["stages_ms"].items():
            if not s.get("n"):
                continue
            rows.append(
                f"| {r['inputs']} | /{r['endpoint']} | {', '.join(r['image_sizes'])} | "
                f"{stage} | {s['median']:.1f} | {s['p95']:.1f} | {s['max']:.1f} |"
            )
    return "\n".join(rows)


def docs_table(results: list[dict]) -> str:
    """The docs' latency table: one row per input set and route, with the median of each stage
    and the median, p95 and max of the total, in milliseconds."""
    rows = [
        "| input | route | decode | detection | embedding | total median | total p95 | total max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        s = r["stages_ms"]
        if not s["total"].get("n"):
            continue
        medians = " | ".join(f"{s[stage]['median']:.1f}" for stage in STAGES[:3])
        total = s["total"]
        rows.append(
            f"| {', '.join(r['image_sizes'])} | `/{r['endpoint']}` | {medians} | "
            f"{total['median']:.1f} | {total['p95']:.1f} | {total['max']:.1f} |"
        )
    return "\n".join(rows)


def runtime(engine: FaceEngine) -> dict:
    """Where the engine ran: device (with the GPU's name), backends, threads and versions."""
    options = engine.options
    device = options.device
    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    try:
        onnxruntime = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        onnxruntime = "not installed"
    return {
        "device": device,
        "embed_backend": options.embed_backend,
        "detect_backend": options.detect_backend,
        "threads": options.threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime,
    }


def header(report: dict) -> str:
    """The lines above the docs table: command, date, commit, machine and runtime."""
    rt = report["runtime"]
    return (
        f"`{report['command']}` ({report['date']}, commit `{report['commit']}`)\n"
        f"machine: {report['machine']}; device: {rt['device']}; "
        f"backends: embed {rt['embed_backend']}, detect {rt['detect_backend']}; "
        f"threads: {rt['threads']}; torch {rt['torch']}, onnxruntime {rt['onnxruntime']}\n"
    )


def commit() -> str:
    """The checkout's short commit (``+`` when it has changes), or ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], check=False).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def plot(results: list[dict], path: Path) -> None:
    """Stacked median stage times per input set and endpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['inputs']}\n/{r['endpoint']}" for r in results]
    fig, ax = plt.subplots(figsize=(5.5, 0.5 + 0.45 * len(results)), dpi=80)
    left = np.zeros(len(results))
    for stage in ("decode", "detection", "embedding", "scoring"):
        values = np.array([r["stages_ms"][stage].get("median", 0.0) for r in results])
        ax.barh(labels, values, left=left, label=stage)
        left += values
    ax.set(xlabel="median ms per request", title="Where a request's time goes")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument(
        "--photos", type=Path, help="a folder of photos (consecutive pairs) instead of LFW"
    )
    parser.add_argument(
        "--sizes", default="lfw", help="LFW inputs: lfw and/or WxH, comma-separated"
    )
    parser.add_argument("--endpoint", default="photo_match", choices=(*ENDPOINTS, "both"))
    parser.add_argument("--requests", type=int, default=50, help="counted requests per input set")
    parser.add_argument("--warmup", type=int, default=10, help="uncounted requests first")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: settings)")
    parser.add_argument("--config", default="current:", help="NAME:key=value,... settings")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument(
        "--table",
        default="stages",
        choices=("stages", "docs"),
        help="stages: every stage's median/p95/max; docs: the docs' table with a header",
    )
    args = parser.parse_args(argv)
    fixed = {"torch_threads": args.threads} if args.threads else {}
    config = parse_config(args.config, **fixed)
    settings = local_settings(config.settings)
    engine = FaceEngine.from_settings(settings)
    client = create_app(settings, engine=engine).test_client()
    if args.photos:
        inputs = {str(args.photos): folder_photos(args.photos, args.requests)}
    else:
        if not (args.lfw / "pairsDevTest.txt").exists():
            print(GET_LFW.format(path=args.lfw), file=sys.stderr)
            return 2
        pairs = read_pairs(args.lfw / "pairsDevTest.txt")
        count = min(args.requests, 50)
        inputs = {
            s: pair_photos(args.lfw, pairs, parse_size(s), count) for s in args.sizes.split(",")
        }
    endpoints = ENDPOINTS if args.endpoint == "both" else (args.endpoint,)
    results = [
        measure(client, photos, endpoint, args.requests, args.warmup, label)
        for label, photos in inputs.items()
        for endpoint in endpoints
    ]
    report = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "commit": commit(),
        "machine": machine(),
        "runtime": runtime(engine),
        "command": "python -m benchmarking_utils.latency " + " ".join(argv or sys.argv[1:]),
        "config": {"name": config.name, **config.describe()},
        "threads": torch.get_num_threads(),
        "results": results,
    }
    print(header(report) + "\n" + docs_table(results) if args.table == "docs" else table(results))
    write_json(args.out, report)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
