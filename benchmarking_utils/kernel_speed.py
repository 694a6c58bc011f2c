"""How fast each CPU-specific fast path is on this CPU against its float32 path, in one process.

The two kernels ``kernel_checks`` guards, each timed beside the float32 path that replaces it
when its check fails, on one thread (the service runs one request's pieces on one core each):

* the gallery search: ``FaceMatrix.nearest`` (top 5 subjects) over ``--rows`` random unit
  faces, with ONNX Runtime's integer kernel (7-bit rows) at every size, with the float32 scan,
  and as the service searches (the float32 scan up to ``FLOAT_SCAN_ROWS`` faces, where it is
  faster, the integer kernel above);
* the embedder: the int8 and the float32 InceptionResnetV1 graphs on one face at the defaults
  (the crop and its mirror: a batch of 2), from the kernel probe's crops.

Each figure is the median of ``--repeats`` timed rounds after a warm-up round, the variants of a
figure timed in turn in each round so that they see the same load; the ratios are float32 / fast
(above 1: the fast path is faster). The CPU's flags that decide the kernels are printed
with them (``kernel_checks.cpu_flags``), and each path's check on this CPU.

    python -m benchmarking_utils.kernel_speed [--rows 20000,100000] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarking_utils.common import machine, write_json
from facematch.config import Settings
from facematch.engine.backends.graph_files import graph_path
from facematch.engine.backends.onnx_int8_runtime import int8_graph_path, load_probe
from facematch.engine.backends.onnx_runtime import OnnxRuntime
from facematch.engine.engine import FaceEngine
from facematch.engine.kernel_checks import cpu_flags
from facematch.gallery import search as gallery_search
from facematch.gallery.search import FaceMatrix

REPO = Path(__file__).resolve().parents[1]


def interleaved_ms(work: dict, repeats: int) -> dict:
    """The median wall time in milliseconds of each of ``work``'s calls, timed in turn (one
    round calls each once) so that all see the same load; one untimed round first."""
    times: dict[str, list[float]] = {label: [] for label in work}
    for round_ in range(repeats + 1):
        for label, call in work.items():
            start = time.perf_counter()
            call()
            if round_:
                times[label].append((time.perf_counter() - start) * 1000)
    return {label: round(float(np.median(values)), 3) for label, values in times.items()}


def search_speed(rows: int, repeats: int) -> dict:
    """``nearest`` over ``rows`` random unit faces (3 a subject): the integer kernel at any
    size, the float32 scan, and the service's choice between them."""
    rng = np.random.default_rng(rows)
    vectors = rng.standard_normal((rows, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = iter(vectors[rng.integers(0, rows, 3 * repeats + 3)])
    subjects = [f"s{i // 3}" for i in range(rows)]
    matrices = {}
    for label, float_scan_rows in (
        ("float32_ms", rows),  # at or under its size a matrix is scanned in float32
        ("int8_ms", 0),
        ("served_ms", gallery_search.FLOAT_SCAN_ROWS),
    ):
        matrices[label] = FaceMatrix(float_scan_rows)
        matrices[label].append(list(range(rows)), subjects, vectors)
    gallery_search.use_kernel(gallery_search.onnx_scores)
    work = {label: (lambda m=m: m.nearest(next(queries), 5, True)) for label, m in matrices.items()}
    result = {"rows": rows, **interleaved_ms(work, repeats)}
    result["float32_over_int8"] = round(result["float32_ms"] / result["int8_ms"], 2)
    return result


def embedder_speed(settings: Settings, repeats: int) -> dict:
    """The int8 and float32 graphs on one face and its mirror (a batch of 2), one thread."""
    int8 = int8_graph_path(settings.data_path, settings.model)
    crops, _ = load_probe(int8)
    batch = np.concatenate([crops[:1], crops[:1, :, :, ::-1]])
    runtimes = {
        "float32_ms": OnnxRuntime(graph_path(settings.data_path, settings.model), threads=1),
        "int8_ms": OnnxRuntime(int8, threads=1),
    }
    work = {label: (lambda r=runtime: r.run(batch)) for label, runtime in runtimes.items()}
    result = {"batch": len(batch), **interleaved_ms(work, repeats)}
    result["float32_over_int8"] = round(result["float32_ms"] / result["int8_ms"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20000,100000", help="gallery sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per figure")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    checks = FaceEngine.from_settings(settings.replace(embed_backend="onnx-int8")).kernel_check()
    result = {
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "machine": machine(),
        "cpu_flags": list(cpu_flags()),
        "checks": {
            "embedder": checks.as_json(),
            "gallery_search": gallery_search.kernel_check().as_json(),
        },
        "search": [],
    }
    print(f"{result['machine']}; flags: {' '.join(result['cpu_flags']) or 'none of note'}")
    for rows in (int(n) for n in args.rows.split(",")):
        figures = search_speed(rows, args.repeats)
        result["search"].append(figures)
        print(
            f"gallery search, {rows:,} faces: int8 {figures['int8_ms']} ms, float32 "
            f"{figures['float32_ms']} ms ({figures['float32_over_int8']}x); as served "
            f"{figures['served_ms']} ms",
            flush=True,
        )
    result["embedder"] = embed = embedder_speed(settings, args.repeats)
    print(
        f"embedder, one face and its mirror: int8 {embed['int8_ms']} ms, float32 "
        f"{embed['float32_ms']} ms ({embed['float32_over_int8']}x)"
    )
    write_json(args.out, result)
    if args.out is None:
        json.dump(result, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
