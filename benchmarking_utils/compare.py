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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flask.testing import FlaskClient
from PIL import Image
from tqdm import tqdm

from benchmarking_utils.baseline import Baseline
from benchmarking_utils.common import (
    EMBED_GFLOP,
    local_settings,
    machine,
    multipart,
    summary,
    write_json,
)
from benchmarking_utils.inputs import pair_photos, parse_size
from deployment_utils.configs import Config, parse_config
from deployment_utils.lfw import GET_LFW, lfw_dir, read_pairs
from facematch.api.app import create_app
from facematch.engine.engine import FaceEngine

TARGETS = {"4032x3024": 8.0, "1280x720": 4.0, "lfw": 2.0}
STAGES = ("decode", "detection", "embedding", "scoring", "total")


@dataclass
class Candidate:
    """One configuration of the service under test: its engine and an in-process client."""

    config: Config
    engine: FaceEngine
    client: FlaskClient


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return (time.perf_counter() - start) * 1000, result


def run_size(
    size_text: str,
    baseline: Baseline,
    candidates: list[Candidate],
    lfw: Path,
    pairs: int,
    warmup: int,
    threads: int,
) -> dict:
    """Per pair: the baseline, then each candidate's /photo_match and /cached_match."""
    photos = pair_photos(
        lfw, read_pairs(lfw / "pairsDevTest.txt"), parse_size(size_text), pairs + warmup
    )
    references = {
        c.config.name: [
            c.client.post("/embeddings", data=multipart(photo=a.data)).get_data() for a, _ in photos
        ]
        for c in candidates
    }
    wall: dict[str, list[float]] = {"baseline": []}
    stages: dict[str, list[dict]] = {"baseline": []}
    for i, (a, b) in enumerate(tqdm(photos, desc=size_text, unit="pair")):
        torch.set_num_threads(threads)
        base_ms, base = timed(lambda: baseline.photo_match(a.data, b.data))
        measured = [("baseline", base_ms, vars(base.latency))]
        for c in candidates:
            photo_ms, photo = timed(
                lambda: c.client.post(
                    "/photo_match", data=multipart(reference=a.data, sample=b.data)
                )
            )
            reference = (io.BytesIO(references[c.config.name][i]), "reference.json")
            cached_ms, cached = timed(
                lambda: c.client.post(
                    "/cached_match", data={"reference": reference, **multipart(sample=b.data)}
                )
            )
            if photo.status_code != 200 or cached.status_code != 200:
                raise RuntimeError(f"{a.name} / {b.name}: {photo.get_json()} {cached.get_json()}")
            measured += [
                (f"{c.config.name} /photo_match", photo_ms, photo.json["latency_ms"]),
                (f"{c.config.name} /cached_match", cached_ms, cached.json["latency_ms"]),
            ]
        if i < warmup:
            continue
        for key, ms, latency in measured:
            wall.setdefault(key, []).append(ms)
            stages.setdefault(key, []).append(latency)
    result = {
        "input": size_text,
        "image_size": [photos[0][0].width, photos[0][0].height],
        "pairs": len(wall["baseline"]),
        "warmup": warmup,
        "target_speedup": TARGETS.get(size_text),
        "wall_ms": {k: summary(v) for k, v in wall.items()},
        "stage_median_ms": {
            k: {s: round(float(np.median([r[s] for r in v])), 2) for s in STAGES}
            for k, v in stages.items()
        },
        "candidates": {},
    }
    base_median = result["wall_ms"]["baseline"]["median"]
    for c in candidates:
        photo = result["wall_ms"][f"{c.config.name} /photo_match"]["median"]
        cached = result["wall_ms"][f"{c.config.name} /cached_match"]["median"]
        result["candidates"][c.config.name] = {
            "photo_match_median_ms": photo,
            "cached_match_median_ms": cached,
            "speedup_photo_match": round(base_median / photo, 2),
            "cached_over_photo": round(cached / photo, 3),
        }
    return result


def embedding_rate(
    candidates: list[Candidate], baseline: Baseline, crop: np.ndarray, threads: int, repeats: int
) -> dict:
    """Milliseconds per face (batches of 1 and 2; the baseline's autograd batch of 1) against the
    machine's float32 peak: the best 1024x1024 PyTorch matrix product at the same thread count,
    measured in the same interleaved loop (NumPy's BLAS would ignore the thread count)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    tensor = torch.from_numpy(np.ascontiguousarray(crop))
    runs = {"baseline batch 1": (1, lambda: baseline.resnet(tensor[None]).detach())}
    for c in candidates:
        runs[f"{c.config.name} batch 1"] = (1, lambda e=c.engine: e.embedder.forward(crop[None]))
        runs[f"{c.config.name} batch 2"] = (
            2,
            lambda e=c.engine: e.embedder.forward(np.stack([crop, crop])),
        )
    per_face: dict[str, list[float]] = {k: [] for k in runs}
    best_matmul = float("inf")
    for _, call in runs.values():
        call()
    for _ in range(repeats):
        for key, (faces, call) in runs.items():
            per_face[key].append(timed(call)[0] / faces)
        for _ in range(3):
            best_matmul = min(best_matmul, timed(lambda: a @ b)[0])
    peak = 2 * 1024**3 / (best_matmul / 1000) / 1e9
    out = {
        "threads": threads,
        "matmul_peak_gflops": round(peak, 1),
        "gflop_per_face": EMBED_GFLOP,
        "per_face": {},
    }
    for key, values in per_face.items():
        ms = float(np.median(values))
        rate = EMBED_GFLOP / ms * 1000
        out["per_face"][key] = {
            "ms": round(ms, 1),
            "gflops": round(rate, 1),
            "fraction_of_peak": round(rate / peak, 3),
        }
    return out


def plot(results: list[dict], path: Path) -> None:
    """Median wall time per input: the baseline and each candidate's two routes (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["input"] for r in results]
    keys = [k for k in results[0]["wall_ms"]]
    x = np.arange(len(labels))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=80)
    for j, key in enumerate(keys):
        values = [r["wall_ms"][key]["median"] for r in results]
        bars = ax.bar(x - 0.4 + width * (j + 0.5), values, width, label=key)
        name, _, route = key.partition(" ")
        if route == "/photo_match":
            for bar, r in zip(bars, results):
                ax.annotate(
                    f"{r['candidates'][name]['speedup_photo_match']:.1f}x",
                    (bar.get_x() + width / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set(
        xticks=x,
        xticklabels=labels,
        yscale="log",
        ylabel="median ms per request",
        title="Two photos per request: baseline vs current",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument(
        "--sizes",
        default="lfw,1280x720,1920x1080,4032x3024",
        help="comma-separated: lfw and/or WxH",
    )
    parser.add_argument("--pairs", type=int, default=20, help="measured pairs per size")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted pairs per size")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for every pipeline (the same, for fair ratios)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="NAME:key=value,... engine settings on top of the environment "
        "(repeatable; default: the environment's settings as 'current')",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTest.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    candidates = []
    for text in args.config or ["current:"]:
        config = parse_config(text, torch_threads=args.threads)
        settings = local_settings(config.settings)
        engine = FaceEngine.from_settings(settings)
        candidates.append(
            Candidate(config, engine, create_app(settings, engine=engine).test_client())
        )
    baseline = Baseline(candidates[0].config.settings)
    results = [
        run_size(s, baseline, candidates, args.lfw, args.pairs, args.warmup, args.threads)
        for s in args.sizes.split(",")
    ]
    photo = pair_photos(args.lfw, read_pairs(args.lfw / "pairsDevTest.txt"), None, 1)[0][0]
    with Image.open(io.BytesIO(photo.data)) as image:
        crop = candidates[0].engine.detect(image.convert("RGB")).primary.crop
    rate = embedding_rate(candidates, baseline, crop, args.threads, 20)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "machine": machine(),
        "command": "python -m benchmarking_utils.compare " + " ".join(argv or sys.argv[1:]),
        "threads": args.threads,
        "configs": {c.config.name: c.config.describe() for c in candidates},
        "results": results,
        "embedding_rate": rate,
    }
    print(table(results))
    print(rate_table(rate))
    write_json(args.out, report)
    if args.plot:
        plot(results, args.plot)
    return 0


def table(results: list[dict]) -> str:
    rows = [
        "| input | pairs | config | baseline ms | /photo_match ms | speed-up (target) | "
        "/cached_match ms | cached / photo (target <= 0.6) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        base = r["wall_ms"]["baseline"]["median"]
        target = f" (>= {r['target_speedup']:g}x)" if r["target_speedup"] else ""
        for name, c in r["candidates"].items():
            rows.append(
                f"| {r['input']} ({r['image_size'][0]}x{r['image_size'][1]}) | {r['pairs']} | "
                f"{name} | {base:.0f} | {c['photo_match_median_ms']:.0f} | "
                f"{c['speedup_photo_match']:.2f}x{target} | {c['cached_match_median_ms']:.0f} | "
                f"{c['cached_over_photo']:.2f} |"
            )
    return "\n".join(rows)


def rate_table(rate: dict) -> str:
    rows = [
        f"Embedding per face at {rate['threads']} thread(s); float32 matmul peak "
        f"{rate['matmul_peak_gflops']:.1f} GFLOP/s; {rate['gflop_per_face']} GFLOP per face",
        "| pipeline | ms per face | GFLOP/s | fraction of peak |",
        "| --- | --- | --- | --- |",
    ]
    for key, v in rate["per_face"].items():
        rows.append(f"| {key} | {v['ms']:.1f} | {v['gflops']:.1f} | {v['fraction_of_peak']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
