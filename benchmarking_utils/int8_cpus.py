"""Does the int8 embedder give the same embeddings on another CPU? Embed here, compare files.

ONNX Runtime picks its int8 kernels by CPU: x86 with VNNI, x86 with AVX2 only (where 8-bit
weights can saturate 16-bit sums), ARM with or without dot-product instructions. This embeds the
first ``--count`` shipped calibration crops (``model_data/int8_calibration.png``) with the built
float32 and int8 graphs and saves the vectors; ``compare`` prints how close two such files are,
graph by graph, and how close each file's int8 vectors are to its float32 ones. Run ``embed``
under another CPU (``qemu-x86_64-static -cpu Haswell-v4``, or an emulated Pi: see
docs/performance.md) and compare it with this machine's file.

    python -m benchmarking_utils.int8_cpus embed --out here.npz
    qemu-x86_64-static -cpu Haswell-v4 .venv/bin/python -m benchmarking_utils.int8_cpus embed \\
        --graphs int8 --out haswell.npz
    python -m benchmarking_utils.int8_cpus compare here.npz haswell.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from deployment_utils.quantize import read_crops
from facematch.config import Settings
from facematch.engine.backends.graph_files import graph_path
from facematch.engine.backends.onnx_int8_runtime import int8_graph_path
from facematch.engine.backends.onnx_runtime import OnnxRuntime


def embed(graph: Path, crops: np.ndarray) -> np.ndarray:
    """Unit embeddings of standardised ``crops`` (n, 3, 160, 160) by the graph at ``graph``,
    one crop a run on one thread (the server's ``OnnxRuntime``)."""
    runtime = OnnxRuntime(graph, threads=1)
    vectors = np.concatenate([runtime.run(crop[None])[0] for crop in crops])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    """The smallest and mean cosine similarity of matching rows of unit ``a`` and ``b``."""
    c = np.sum(a * b, axis=1)
    return {"min": round(float(c.min()), 6), "mean": round(float(c.mean()), 6)}


def compare(first: dict, second: dict) -> dict:
    """Each graph's vectors in both files against each other, and int8 against float32 in
    each file that has both."""
    n = min(len(v) for v in (*first.values(), *second.values()))
    report = {
        f"{graph}: first vs second": cosines(first[graph][:n], second[graph][:n])
        for graph in sorted(set(first) & set(second))
    }
    for label, vectors in (("first", first), ("second", second)):
        if {"float32", "int8"} <= set(vectors):
            report[f"{label}: int8 vs float32"] = cosines(
                vectors["int8"][:n], vectors["float32"][:n]
            )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("embed", help="embed the crops with the built graphs")
    run.add_argument("--out", type=Path, required=True, help="the .npz to write")
    run.add_argument("--count", type=int, default=40, help="calibration crops embedded")
    run.add_argument("--graphs", choices=("both", "int8"), default="both")
    check = commands.add_parser("compare", help="compare two files written by embed")
    check.add_argument("first", type=Path)
    check.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    if args.command == "compare":
        first, second = (dict(np.load(path)) for path in (args.first, args.second))
        print(json.dumps(compare(first, second), indent=1))
        return 0
    settings = Settings.from_env()
    crops = read_crops()[: args.count]
    graphs = {"int8": int8_graph_path(settings.data_path, settings.model)}
    if args.graphs == "both":
        graphs["float32"] = graph_path(settings.data_path, settings.model)
    np.savez(args.out, **{label: embed(path, crops) for label, path in graphs.items()})
    print(f"{len(crops)} crops through {', '.join(graphs)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
