"""Choose the default decision threshold on LFW View 1 and check it.

The threshold maximising accuracy on ``pairsDevTrain.txt`` is chosen, then accuracy at that
threshold is measured on ``pairsDevTest.txt``. Both go to stdout and, as JSON, to ``--out``.

    python -m benchmarking_utils.threshold [--metric cosine] [--out docs/results/threshold.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarking_utils.common import write_json
from deployment_utils.lfw import (
    GET_LFW,
    accuracy_counting_failures,
    choose_threshold,
    engine_embedder,
    lfw_dir,
    pair_distances,
    read_pairs,
)
from facematch.config import Settings
from facematch.decision import scores as score_service
from facematch.engine.engine import FaceEngine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder")
    parser.add_argument("--metric", choices=score_service.METRICS, default="cosine")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTrain.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2

    settings = Settings.from_env()
    engine = FaceEngine.from_settings(settings)
    embed = engine_embedder(engine)
    started = time.time()
    train_d, train_y, train_fail = pair_distances(
        embed, args.lfw, read_pairs(args.lfw / "pairsDevTrain.txt"), args.metric, "DevTrain"
    )
    threshold = choose_threshold(train_d, train_y)
    test_d, test_y, test_fail = pair_distances(
        embed, args.lfw, read_pairs(args.lfw / "pairsDevTest.txt"), args.metric, "DevTest"
    )
    result = {
        "model": settings.model,
        "metric": args.metric,
        "margin": settings.margin,
        "face_selection": settings.face_selection,
        "flip_embeddings": settings.flip_embeddings,
        "threshold": round(threshold, 4),
        "devtrain_accuracy": accuracy_counting_failures(train_d, train_y, threshold),
        "devtest_accuracy": accuracy_counting_failures(test_d, test_y, threshold),
        "devtrain_images_without_face": train_fail,
        "devtest_images_without_face": test_fail,
        "seconds": round(time.time() - started, 1),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads "
        f"{torch.get_num_threads()}",
    }
    print(json.dumps(result, indent=2))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
