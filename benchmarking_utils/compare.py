"""Baseline against the current pipeline, in one process, on the same inputs, interleaved.

For each input size, each LFW DevTest pair (alternating matched and mismatched) goes through the
baseline (``benchmarking_utils.baseline``: full-resolution MTCNN, one image at a time, autograd
on), then the service's ``/photo_match`` and ``/cached_match`` (the Flask test client, the real
routes with the configured engine). The first ``--warmup`` requests of each kind and size are
not counted. Medians and ratios go to stdout and ``--out``; so does the embedding rate per face
against this machine's float32 matrix-product peak measured in the same run.

    python -m benchmarking_utils.compare --out docs/results/compare.json --plot docs/compare.png
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from benchmarking_utils.baseline import Baseline
from benchmarking_utils.common import (
    EMBED_GFLOP, local_settings, machine, matmul_gflops, multipart, parse_config, summary,
)
from benchmarking_utils.inputs import pair_photos, parse_size
from benchmarking_utils.lfw import GET_LFW, lfw_dir, read_pairs
from photo_inferencing import FaceEngine
from server import create_app

TARGETS = {"4032x3024": 8.0, "1280x720": 4.0, "lfw": 2.0}
CACHED_TARGET = 0.6
STAGES = ("decode", "detection", "embedding", "scoring", "total")


def run_size(size_text: str, baseline: Baseline, client, lfw: Path, pairs: int, warmup: int,
             threads: int) -> dict:
    """Interleave baseline, /photo_match and /cached_match over the pairs of one input size."""
    size = parse_size(size_text)
    photos = pair_photos(lfw, read_pairs(lfw / "pairsDevTest.txt"), size, pairs + warmup)
    references = [client.post("/embeddings", data=multipart(photo=a.data)).get_data()
                  for a, _ in photos]
    times = {"baseline": [], "photo_match": [], "cached_match": []}
    stages = {"baseline": [], "photo_match": [], "cached_match": []}
    distance_gap = []
    for i, (a, b) in enumerate(tqdm(photos, desc=size_text, unit="pair")):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        base = baseline.photo_match(a.data, b.data)
        base_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        photo = client.post("/photo_match", data=multipart(reference=a.data, sample=b.data))
        photo_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        cached = client.post("/cached_match", data={
            "reference": (io.BytesIO(references[i]), "reference.json"),
            **multipart(sample=b.data)})
        cached_ms = (time.perf_counter() - start) * 1000
        if photo.status_code != 200 or cached.status_code != 200:
            raise RuntimeError(f"{a.name} / {b.name}: {photo.get_json()} {cached.get_json()}")
        if i < warmup:
            continue
        times["baseline"].append(base_ms)
        times["photo_match"].append(photo_ms)
        times["cached_match"].append(cached_ms)
        stages["baseline"].append(vars(base.latency))
        stages["photo_match"].append(photo.json["latency_ms"])
        stages["cached_match"].append(cached.json["latency_ms"])
        if base.distance is not None:
            distance_gap.append(abs(base.distance - photo.json["distance"]))
    result = {
        "input": size_text,
        "image_size": [photos[0][0].width, photos[0][0].height],
        "pairs": len(times["baseline"]),
        "warmup": warmup,
        "wall_ms": {k: summary(v) for k, v in times.items()},
        "stage_median_ms": {k: {s: round(float(np.median([r[s] for r in v])), 2) for s in STAGES}
                            for k, v in stages.items()},
        "median_abs_distance_difference_vs_baseline": round(float(np.median(distance_gap)), 4)
        if distance_gap else None,
    }
    base_median = result["wall_ms"]["baseline"]["median"]
    photo_median = result["wall_ms"]["photo_match"]["median"]
    result["speedup_photo_match"] = round(base_median / photo_median, 2)
    result["cached_over_photo"] = round(result["wall_ms"]["cached_match"]["median"] / photo_median, 3)
    result["target_speedup"] = TARGETS.get(size_text)
    return result


def embedding_rate(engine: FaceEngine, baseline: Baseline, crop: torch.Tensor, threads: int,
                   repeats: int) -> dict:
    """Milliseconds per face (batch of 1 and of 2, and the baseline's autograd forward) against
    the float32 matmul peak at the same thread count, interleaved."""
    torch.set_num_threads(threads)
    peak = matmul_gflops(threads)
    runs = {"current_batch1": lambda: engine.forward(crop[None]),
            "current_batch2": lambda: engine.forward(torch.stack([crop, crop])),
            "baseline_batch1": lambda: baseline.resnet(crop[None]).detach()}
    per_face = {k: [] for k in runs}
    for k, f in runs.items():
        f()
    for _ in range(repeats):
        for k, f in runs.items():
            start = time.perf_counter()
            f()
            faces = 2 if k.endswith("2") else 1
            per_face[k].append((time.perf_counter() - start) * 1000 / faces)
    out = {"threads": threads, "matmul_peak_gflops": round(peak, 1), "flop_per_face_g": EMBED_GFLOP}
    for k, v in per_face.items():
        ms = float(np.median(v))
        out[k] = {"ms_per_face": round(ms, 1), "gflops": round(EMBED_GFLOP / ms * 1000, 1),
                  "fraction_of_peak": round(EMBED_GFLOP / ms * 1000 / peak, 3)}
    return out


def plot(results: list[dict], path: Path) -> None:
    """Median wall time per input: baseline, /photo_match and /cached_match (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["input"] for r in results]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=80)
    for offset, (key, label) in zip((-0.27, 0, 0.27), (("baseline", "baseline"),
                                                        ("photo_match", "/photo_match"),
                                                        ("cached_match", "/cached_match"))):
        values = [r["wall_ms"][key]["median"] for r in results]
        bars = ax.bar(x + offset, values, 0.26, label=label)
        if key == "photo_match":
            for bar, r in zip(bars, results):
                ax.annotate(f"{r['speedup_photo_match']:.1f}x", (bar.get_x() + 0.13,
                            bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set(xticks=x, xticklabels=labels, yscale="log", ylabel="median ms per pair",
           title="Two photos, one request: baseline vs current")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--sizes", default="lfw,1280x720,1920x1080,4032x3024",
                        help="comma-separated: lfw and/or WxH")
    parser.add_argument("--pairs", type=int, default=20, help="measured pairs per size")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted pairs per size")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for both pipelines (the same, for a fair ratio)")
    parser.add_argument("--config", default="current:",
                        help="NAME:key=value,... engine settings on top of the environment")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTest.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    config = parse_config(args.config, torch_threads=args.threads)
    settings = local_settings(config.settings)
    engine = FaceEngine.from_settings(settings)
    client = create_app(settings, engine=engine).test_client()
    baseline = Baseline(settings)
    results = [run_size(s, baseline, client, args.lfw, args.pairs, args.warmup, args.threads)
               for s in args.sizes.split(",")]
    photo = pair_photos(args.lfw, read_pairs(args.lfw / "pairsDevTest.txt"), None, 1)[0][0]
    crop = engine.detect(Image.open(io.BytesIO(photo.data)).convert("RGB")).primary.crop
    rate = embedding_rate(engine, baseline, crop, args.threads, 20)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "machine": machine(),
        "command": "python -m benchmarking_utils.compare " + " ".join(argv or sys.argv[1:]),
        "config": {"name": config.name, **config.describe()},
        "threads": args.threads,
        "results": results,
        "embedding_rate": rate,
    }
    print(table(results))
    print(json.dumps(rate, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


def table(results: list[dict]) -> str:
    rows = ["| input | pairs | baseline median (p95) ms | /photo_match median (p95) ms | speed-up "
            "| target | /cached_match median ms | cached / photo (target <= 0.6) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        w = r["wall_ms"]
        target = f">= {r['target_speedup']:g}x" if r["target_speedup"] else ""
        rows.append(
            f"| {r['input']} ({r['image_size'][0]}x{r['image_size'][1]}) | {r['pairs']} | "
            f"{w['baseline']['median']:.0f} ({w['baseline']['p95']:.0f}) | "
            f"{w['photo_match']['median']:.0f} ({w['photo_match']['p95']:.0f}) | "
            f"{r['speedup_photo_match']:.2f}x | {target} | {w['cached_match']['median']:.0f} | "
            f"{r['cached_over_photo']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
