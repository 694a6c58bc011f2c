"""Build the calibration table of a configuration from LFW View 1
(``facematch.decision.calibration`` reads it).

Embeds the images of ``pairsDevTrain.txt`` and ``pairsDevTest.txt`` (View 1 only: View 2's
``pairs.txt`` stays for the reported figures) the way the service does, through the embedding
cache of ``deployment_utils.lfw``, and writes the cosine distance of every pair
with a face in both photos, with its provenance (date, commit, command, images, pair counts,
settings), to ``model_data/calibration-<model>-<key>.json``. Another configuration gets its own
table from the same command:

    python -m deployment_utils.calibration                              # the default settings
    python -m deployment_utils.calibration --config x:margin=20 --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from deployment_utils.configs import parse_config
from deployment_utils.lfw import GET_LFW, embed_lfw, lfw_dir, read_pairs
from facematch.decision import calibration
from facematch.decision import scores as score_service
from facematch.engine.options import EngineOptions

REPO = Path(__file__).resolve().parents[1]
PAIR_FILES = ("pairsDevTrain.txt", "pairsDevTest.txt")
POPULATION = (
    "LFW View 1 (pairsDevTrain + pairsDevTest): news photos of mostly adult, mostly "
    "light-skinned public figures"
)


def _commit() -> str:
    """The repository's commit (``+dirty`` with uncommitted changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def build_table(settings, root: Path, command: str) -> dict:
    """The calibration table (a JSON-ready dict) of ``settings`` measured on LFW View 1 under
    ``root``; ``command`` is recorded as how it was made."""
    options = EngineOptions.from_settings(settings)
    pairs = [pair for name in PAIR_FILES for pair in read_pairs(root / name)]
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    embedded = embed_lfw(settings, root, names)
    index = {name: i for i, name in enumerate(embedded.names)}
    same, different, skipped = [], [], 0
    for pair in pairs:
        if pair.first not in index or pair.second not in index:
            skipped += 1
            continue
        d = score_service.cosine_distance(
            embedded.vectors[index[pair.first]], embedded.vectors[index[pair.second]]
        )
        (same if pair.same else different).append(round(d, 8))
    return {
        "population": POPULATION,
        "key": calibration.embedding_key(options),
        "metric": "cosine",
        "provenance": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": _commit(),
            "command": command,
            "pair_files": list(PAIR_FILES),
            "images": len(names),
            "images_without_face": len(embedded.without_face),
            "pairs": {
                "same": len(same),
                "different": len(different),
                "skipped_no_face": skipped,
            },
            "settings": calibration.embedding_settings(options),
            "weights": settings.weights or f"{settings.model} (the default weights)",
        },
        "distances": {"same": sorted(same), "different": sorted(different)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder")
    parser.add_argument(
        "--config", default="default:", help="NAME:key=value,... on top of the environment"
    )
    parser.add_argument(
        "--out", type=Path, default=calibration.MODEL_DATA, help="folder of the tables"
    )
    args = parser.parse_args(argv)
    if not all((args.lfw / name).is_file() for name in PAIR_FILES):
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    settings = parse_config(args.config).settings
    command = "python -m deployment_utils.calibration " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    table = build_table(settings, args.lfw, command.strip())
    path = calibration.table_path(EngineOptions.from_settings(settings), args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    loaded = calibration.Calibration.from_table(table, path.name)
    at_default = score_service.default_threshold("cosine")
    print(
        json.dumps(
            {
                "table": str(path),
                "pairs": loaded.pairs,
                "smallest_far": loaded.smallest_far,
                "far_at_default_threshold": loaded.far(at_default),
                "frr_at_default_threshold": loaded.frr(at_default),
                "threshold_at_far_0.001": round(loaded.threshold_at_far(0.001), 6),
                "threshold_at_far_0.01": round(loaded.threshold_at_far(0.01), 6),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
