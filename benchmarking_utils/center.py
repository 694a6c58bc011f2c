"""Compute a model's embedding centre: the mean unit embedding of the LFW View 1 DevTrain faces.

The engine subtracts it from every embedding when ``FACEMATCH_CENTER_EMBEDDINGS`` is on (as
Sandberg's ``--subtract_mean`` does with the training folds' mean), which removes the direction
all faces share and separates people better. Only View 1 DevTrain images are used, so View 2
stays untouched for the reported figure. Writes the vector (float16, base64) as JSON and prints
the ``EMBEDDING_CENTERS`` entry for ``photo_inferencing.py``.

    python -m benchmarking_utils.center --out docs/results/embedding_center.json
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from benchmarking_utils.accuracy import Evaluator
from benchmarking_utils.common import parse_config, write_json
from benchmarking_utils.lfw import GET_LFW, lfw_dir, read_pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--config",
        default="center:",
        help="NAME:key=value,... settings (centring is switched off to measure)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTrain.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    config = parse_config(args.config, center_embeddings=False, flip_embeddings=False)
    pairs = read_pairs(args.lfw / "pairsDevTrain.txt")
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    vectors = Evaluator(args.lfw, None, args.threads).vectors(config, names, "DevTrain")
    found = np.stack([v for v in vectors.values() if v is not None])
    center = found.mean(axis=0).astype("<f2")
    encoded = base64.b64encode(center.tobytes()).decode()
    result = {
        "model": config.settings.model,
        "what": "mean unit embedding of the primary faces of LFW View 1 pairsDevTrain images",
        "images": int(found.shape[0]),
        "settings": config.describe(),
        "norm": round(float(np.linalg.norm(center.astype(np.float32))), 4),
        "date": datetime.date.today().isoformat(),
        "float16_base64": encoded,
    }
    print(f'EMBEDDING_CENTERS["{config.settings.model}"] = "{encoded}"')
    print(json.dumps({k: v for k, v in result.items() if k != "float16_base64"}, indent=2))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
