"""Which primary-face rule serves verification best? Measured on LFW View 1.

Every face in every image is detected and embedded once; each of facenet-pytorch's selection
rules then picks its primary face from the same detections. For each rule the threshold is chosen
on DevTrain and accuracy is reported on DevTrain and DevTest (pairs with no face count as wrong).

    python -m benchmarking_utils.face_selection [--out docs/results/face_selection.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarking_utils.common import write_json
from deployment_utils.lfw import (
    GET_LFW,
    accuracy_counting_failures,
    choose_threshold,
    lfw_dir,
    read_pairs,
)
from facematch.config import Settings
from facematch.decision import scores as score_service
from facematch.engine.detection import rank_faces
from facematch.engine.engine import FaceEngine
from facematch.engine.options import SELECTION_METHODS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTrain.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2

    settings = Settings.from_env()
    engine = FaceEngine.from_settings(settings)
    splits = {name: read_pairs(args.lfw / f"pairs{name}.txt") for name in ("DevTrain", "DevTest")}
    names = sorted({n for pairs in splits.values() for p in pairs for n in (p.first, p.second)})

    detections = {}
    multi = 0
    for name in tqdm(names, desc="detect+embed all faces", unit="img"):
        with Image.open(args.lfw / "images" / name) as image:
            found = engine.detect(image.convert("RGB"))
        if not found.faces:
            detections[name] = None
            continue
        boxes = np.array([f.box for f in found.faces])
        probs = np.array([f.probability for f in found.faces])
        vectors = engine.embed([f.crop for f in found.faces]).vectors
        detections[name] = (boxes, probs, vectors, found.width, found.height)
        multi += len(found.faces) > 1

    result = {"images": len(names), "images_with_several_faces": multi, "methods": {}}
    for method in SELECTION_METHODS:
        primary = {}
        for name, found in detections.items():
            if found is None:
                primary[name] = None
                continue
            boxes, probs, vectors, width, height = found
            primary[name] = vectors[rank_faces(boxes, probs, width, height, method)[0]]
        scores = {}
        for split, pairs in splits.items():
            d = np.array(
                [
                    np.nan
                    if primary[p.first] is None or primary[p.second] is None
                    else score_service.cosine_distance(primary[p.first], primary[p.second])
                    for p in pairs
                ]
            )
            scores[split] = (d, np.array([p.same for p in pairs]))
        threshold = choose_threshold(*scores["DevTrain"])
        result["methods"][method] = {
            "threshold": round(threshold, 4),
            **{
                f"{split.lower()}_accuracy": round(accuracy_counting_failures(d, y, threshold), 4)
                for split, (d, y) in scores.items()
            },
        }
    print(json.dumps(result, indent=2))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
