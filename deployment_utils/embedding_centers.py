"""Build a model's embedding centre: the mean unit embedding of the LFW View 1 DevTrain faces.

The engine subtracts it from every embedding when ``FACEMATCH_CENTER_EMBEDDINGS`` is on (as
Sandberg's ``--subtract_mean`` does with the training folds' mean), which removes the direction
all faces share and separates people better. Only View 1 DevTrain images are used, so View 2
stays untouched for the reported figure. The vector (rounded to float16) and its provenance
(which images, how many, settings, commit, command) replace the model's entry in
``model_data/embedding_centers.json``, which the engine reads (``facematch.engine.embedding``).

    python -m deployment_utils.embedding_centers [--centers model_data/embedding_centers.json]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from deployment_utils.lfw import GET_LFW, lfw_dir, read_pairs
from facematch.config import Settings
from facematch.engine.embedding import CENTERS_FILE
from facematch.engine.engine import FaceEngine

REPO = Path(__file__).resolve().parents[1]
MEASURED = (
    "margin",
    "face_selection",
    "detect_max_side",
    "min_face_size",
    "detect_backend",
    "embed_backend",
    "flip_embeddings",
    "center_embeddings",
)


def mean_embedding(engine: FaceEngine, photos: list[Path]) -> tuple[np.ndarray, int]:
    """The mean of the primary-face embeddings of ``photos`` (as float16) and how many had one."""
    vectors = []
    for path in tqdm(photos, desc="embedding centre", unit="img", mininterval=5):
        with Image.open(path) as image:
            face = engine.detect(image.convert("RGB")).primary
        if face is not None:
            vectors.append(engine.embed([face.crop]).vectors[0])
    return np.stack(vectors).mean(axis=0).astype("<f2"), len(vectors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--centers", type=Path, default=CENTERS_FILE, help="file to update")
    args = parser.parse_args(argv)
    pair_list = args.lfw / "pairsDevTrain.txt"
    if not pair_list.exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    settings = Settings.from_env(center_embeddings=False, flip_embeddings=False)
    engine = FaceEngine.from_settings(settings)
    pairs = read_pairs(pair_list)
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    center, count = mean_embedding(engine, [args.lfw / "images" / n for n in names])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    entry = {
        "vector": [float(v) for v in center],
        "what": "mean unit embedding of the primary faces of LFW View 1 pairsDevTrain images",
        "images": "every image named in LFW View 1 pairsDevTrain.txt that has a face",
        "pair_list_sha256": hashlib.sha256(pair_list.read_bytes()).hexdigest(),
        "count": count,
        "settings": {key: getattr(settings, key) for key in MEASURED},
        "norm": round(float(np.linalg.norm(center.astype(np.float32))), 4),
        "precision": "float16 (each value is exactly a float16 number)",
        "built": {
            "date": datetime.date.today().isoformat(),
            "commit": commit,
            "command": "python -m deployment_utils.embedding_centers "
            + " ".join(argv or sys.argv[1:]),
        },
    }
    data = json.loads(args.centers.read_text()) if args.centers.exists() else {"models": {}}
    data["models"][settings.model] = entry
    args.centers.parent.mkdir(parents=True, exist_ok=True)
    args.centers.write_text(json.dumps(data, indent=2) + "\n")
    summary = {k: v for k, v in entry.items() if k != "vector"}
    print(json.dumps({"model": settings.model, **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
