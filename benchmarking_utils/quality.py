"""Face quality against errors on LFW: error rates by quality bin, and purpose-made degradations.

Two measurements under one configuration, written to one results JSON:

1. ``bins``: the primary face of every image of LFW View 1 ``pairsDevTest.txt`` is detected again
   and measured (``face_quality.measure``); each pair takes the worse of its two faces' measures
   (the narrower, blurrier, more turned, darker face) and the pairs are split into quantile bins
   per measure, with the error rate at the default threshold in each (distances from the
   embedding cache of ``benchmarking_utils.lfw_embeddings``).
2. ``degradations``: for ``--pairs`` DevTest pairs (half same, half different), the second photo
   is blurred, downscaled, darkened or rotated at several strengths, then detected, measured and
   embedded as the service would; per condition: accuracy at the default threshold (a photo
   without a face counts as an error), the share the gate (``QualityGate``'s bars) refuses, and
   the accuracy of what it lets pass and of what it refuses.

The per-image records are cached in ``benchmark_results/cache/`` so a change of the bars only
recomputes the summaries.

    python -m benchmarking_utils.quality --out docs/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from benchmarking_utils.common import write_json
from deployment_utils.configs import parse_config
from deployment_utils.lfw import CACHE, GET_LFW, embed_lfw, lfw_dir, read_pairs, settings_key
from facematch.decision import quality as face_quality
from facematch.decision import scores as score_service
from facematch.decision.quality import FaceQuality, QualityGate
from facematch.engine.decoding import decode_image

BIN_MEASURES = {  # measure -> how a pair takes the worse of its two faces
    "width_px": min,
    "sharpness": min,
    "yaw": lambda a, b: max(abs(a), abs(b)),
    "pitch": lambda a, b: max(abs(a), abs(b)),
    "brightness": min,
    "probability": min,
}
DEGRADATIONS = {
    "none": [None],
    "blur": [1.5, 3.0, 6.0],  # Gaussian radius in pixels (250x250 photos)
    "downscale": [0.5, 0.35, 0.25],  # the photo's scale: faces about 55, 38, 27 px wide
    "darken": [0.4, 0.2, 0.1],  # pixel values multiplied by this
    "rotate": [15, 30, 45],  # degrees, in the image plane
}


def degrade(image: Image.Image, kind: str, level) -> Image.Image:
    """``image`` blurred, downscaled, darkened or rotated at ``level`` (``none``: unchanged)."""
    if kind == "none":
        return image
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(level))
    if kind == "downscale":
        size = (round(image.width * level), round(image.height * level))
        return image.resize(size, Image.BILINEAR)
    if kind == "darken":
        return Image.eval(image, lambda v: int(v * level))
    if kind == "rotate":
        return image.rotate(level, resample=Image.BILINEAR)
    raise ValueError(kind)


def _quality_json(found) -> dict | None:
    return None if found is None else found.to_json()


def _measured(engine, image: Image.Image) -> tuple[FaceQuality | None, object]:
    """The primary face's quality and the detection (None, None without a face)."""
    found = engine.detect(image)
    face = found.primary
    if face is None:
        return None, None
    return face_quality.measure(image, face.box, face.landmarks, face.probability), face


def _records(settings, root: Path, n_pairs: int, progress: bool) -> dict:
    """Per-image quality of DevTest and per-condition records of the degraded pairs."""
    from facematch.engine.engine import FaceEngine

    path = CACHE / f"quality-records-{n_pairs}-{settings_key(settings)}.json"
    if path.exists():
        return json.loads(path.read_text())
    engine = FaceEngine.from_settings(settings)
    pairs = read_pairs(root / "pairsDevTest.txt")
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    images = {}
    for name in tqdm(names, desc="measuring DevTest", mininterval=10, disable=not progress):
        image = decode_image((root / "images" / name).read_bytes(), settings.max_pixels, name)
        quality, _ = _measured(engine, image)
        images[name] = _quality_json(quality)
    same = [p for p in pairs if p.same][: n_pairs // 2]
    different = [p for p in pairs if not p.same][: n_pairs - len(same)]
    chosen = same + different
    embedded = embed_lfw(settings, root, sorted({p.first for p in chosen}))
    index = {n: i for i, n in enumerate(embedded.names)}
    degraded = []
    conditions = [(kind, level) for kind, levels in DEGRADATIONS.items() for level in levels]
    for kind, level in tqdm(conditions, desc="degradations", disable=not progress):
        for pair in chosen:
            raw = (root / "images" / pair.second).read_bytes()
            image = degrade(decode_image(raw, settings.max_pixels, pair.second), kind, level)
            quality, face = _measured(engine, image)
            distance = None
            if face is not None and pair.first in index:
                vector = engine.embed([face.crop]).vectors[0]
                distance = score_service.cosine_distance(
                    embedded.vectors[index[pair.first]], vector
                )
            degraded.append(
                {
                    "kind": kind,
                    "level": level,
                    "same": pair.same,
                    "distance": distance,
                    "quality": _quality_json(quality),
                }
            )
    records = {"devtest_images": images, "degraded": degraded}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return records


def quality_bins(records: dict, settings, root: Path, threshold: float, bins: int) -> dict:
    """Per measure: quantile bins of DevTest pairs by their worse face, with error rates."""
    pairs = read_pairs(root / "pairsDevTest.txt")
    embedded = embed_lfw(
        settings, root, sorted({p.first for p in pairs} | {p.second for p in pairs})
    )
    index = {n: i for i, n in enumerate(embedded.names)}
    images = records["devtest_images"]
    rows = []
    for p in pairs:
        a, b = images.get(p.first), images.get(p.second)
        if a is None or b is None or p.first not in index or p.second not in index:
            continue
        d = score_service.cosine_distance(
            embedded.vectors[index[p.first]], embedded.vectors[index[p.second]]
        )
        worse = {
            m: (combine(a[m], b[m]) if a[m] is not None and b[m] is not None else np.nan)
            for m, combine in BIN_MEASURES.items()
        }
        rows.append((worse, (d <= threshold) != p.same))
    result = {}
    for measure in BIN_MEASURES:
        values = np.array([w[measure] for w, _ in rows], dtype=np.float64)
        errors = np.array([e for _, e in rows])
        keep = ~np.isnan(values)
        values, errors = values[keep], errors[keep]
        order = np.argsort(values)
        table = []
        for chunk in np.array_split(order, bins):
            table.append(
                {
                    "from": round(float(values[chunk].min()), 3),
                    "to": round(float(values[chunk].max()), 3),
                    "pairs": int(len(chunk)),
                    "error_rate": round(float(errors[chunk].mean()), 4),
                }
            )
        result[measure] = table
    return {"pairs": len(rows), "threshold": threshold, "bins": result}


def degradation_table(records: dict, gate: QualityGate, threshold: float) -> list[dict]:
    """Per condition: accuracy, the gate's refusals and the accuracy on each side of it."""
    table = []
    for kind, levels in DEGRADATIONS.items():
        for level in levels:
            rows = [r for r in records["degraded"] if r["kind"] == kind and r["level"] == level]
            correct, refused, reasons = [], [], {}
            for r in rows:
                ok = r["distance"] is not None and (r["distance"] <= threshold) == r["same"]
                correct.append(ok)
                found = (
                    ["no face found"]
                    if r["quality"] is None
                    else gate.reasons(FaceQuality(**r["quality"]))
                )
                refused.append(bool(found))
                for reason in found:
                    key = re.sub(r"[0-9.]+%?", "N", reason.split(" (")[0].split(",")[0])
                    reasons[key] = reasons.get(key, 0) + 1
            correct_a, refused_a = np.array(correct), np.array(refused)
            passed = ~refused_a
            table.append(
                {
                    "kind": kind,
                    "level": level,
                    "pairs": len(rows),
                    "no_face": sum(r["quality"] is None for r in rows),
                    "accuracy": round(float(correct_a.mean()), 4),
                    "refused": round(float(refused_a.mean()), 4),
                    "accuracy_passed": round(float(correct_a[passed].mean()), 4)
                    if passed.any()
                    else None,
                    "accuracy_refused": round(float(correct_a[refused_a].mean()), 4)
                    if refused_a.any()
                    else None,
                    "median": _medians([r["quality"] for r in rows if r["quality"]]),
                    "reasons": dict(sorted(reasons.items())),
                }
            )
    return table


def _medians(qualities: list[dict]) -> dict:
    if not qualities:
        return {}
    return {
        m: round(float(np.median([abs(q[m]) for q in qualities if q[m] is not None])), 2)
        for m in ("width_px", "sharpness", "yaw", "pitch", "roll", "brightness", "clipped")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder")
    parser.add_argument("--config", default="default:", help="NAME:key=value,...")
    parser.add_argument("--pairs", type=int, default=200, help="DevTest pairs degraded")
    parser.add_argument("--bins", type=int, default=5, help="quantile bins per measure")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTest.txt").is_file():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    config = parse_config(args.config)
    settings = config.settings
    threshold = score_service.default_threshold("cosine")
    records = _records(settings, args.lfw, args.pairs, not args.quiet)
    gate = QualityGate("reject")
    result = {
        "command": "python -m benchmarking_utils.quality " + " ".join(argv or sys.argv[1:]),
        "config": config.describe(),
        "bars": gate.bars.__dict__,
        "devtest": quality_bins(records, settings, args.lfw, threshold, args.bins),
        "degradations": degradation_table(records, gate, threshold),
    }
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
