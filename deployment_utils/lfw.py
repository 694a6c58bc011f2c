"""LFW pair lists and images: reading the official files, embedding the pairs, and the large
photos made by pasting an LFW photo on a generated background (benchmarks and tests).

Layout (see ``shared/data/lfw/README.md``): ``images/<Name>/<Name>_NNNN.jpg`` and the pair files
``pairsDevTrain.txt``, ``pairsDevTest.txt`` (View 1) and ``pairs.txt`` (View 2, 10 folds).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from facematch.decision import scores as score_service

DEFAULT_LFW_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"
GET_LFW = (
    "LFW is not at {path}. Set FACEMATCH_LFW_DIR to a folder holding images/<Name>/<Name>_NNNN.jpg "
    "(from the official lfw.tgz, University of Massachusetts, Amherst) and the pair lists "
    "pairsDevTrain.txt, pairsDevTest.txt and pairs.txt."
)

PHOTO_HEIGHT = 0.5  # a pasted LFW photo's height, as a fraction of the canvas height


@dataclass(frozen=True)
class Pair:
    """Two LFW images (paths relative to ``images/``), ``same`` if they show one person."""

    first: str
    second: str
    same: bool
    fold: int = 0


def lfw_dir() -> Path:
    """The LFW folder: ``FACEMATCH_LFW_DIR`` or ``../shared/data/lfw`` beside the repository."""
    return Path(os.environ.get("FACEMATCH_LFW_DIR", DEFAULT_LFW_DIR))


def image_name(person: str, number: int | str) -> str:
    return f"{person}/{person}_{int(number):04d}.jpg"


def read_pairs(path: Path) -> list[Pair]:
    """Parse an official pair list; View 2's folds are numbered from 0."""
    lines = Path(path).read_text().splitlines()
    header = lines[0].split()
    per_fold = 2 * int(header[-1]) if len(header) == 2 else len(lines) - 1
    pairs = []
    for index, line in enumerate(lines[1:]):
        parts = line.split("\t")
        fold = index // per_fold
        if len(parts) == 3:
            pairs.append(
                Pair(image_name(parts[0], parts[1]), image_name(parts[0], parts[2]), True, fold)
            )
        elif len(parts) == 4:
            pairs.append(
                Pair(image_name(parts[0], parts[1]), image_name(parts[2], parts[3]), False, fold)
            )
    return pairs


def pair_distances(
    embed_image: Callable[[Image.Image], np.ndarray | None],
    root: Path,
    pairs: Iterable[Pair],
    metric: str = "cosine",
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Embed each distinct image once and return (distances, same labels, images without a face).

    ``embed_image`` returns None when it finds no face; such a pair gets distance ``nan``, which
    every accuracy figure here counts as a wrong decision.
    """
    pairs = list(pairs)
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    vectors: dict[str, np.ndarray | None] = {}
    for name in tqdm(names, desc=progress, unit="img", disable=progress is None):
        with Image.open(root / "images" / name) as image:
            vectors[name] = embed_image(image.convert("RGB"))
    distances = np.array(
        [
            np.nan
            if vectors[p.first] is None or vectors[p.second] is None
            else score_service.distance(vectors[p.first], vectors[p.second], metric)
            for p in pairs
        ]
    )
    same = np.array([p.same for p in pairs])
    return distances, same, sum(v is None for v in vectors.values())


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy on labelled pairs, and that accuracy (tools only: the service
    reads its thresholds from ``DEFAULT_THRESHOLDS`` or a calibration table).

    Among the distance intervals with the best accuracy, the first one's midpoint is chosen, so
    the threshold does not sit on a training sample.
    """
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    order = np.argsort(d)
    d, y = d[order], y[order]
    # Threshold below all points: everything rejected -> correct = number of different pairs.
    correct = (~y).sum() + np.cumsum(np.where(y, 1, -1))
    candidates = np.concatenate([[(~y).sum()], correct])
    best = int(np.argmax(candidates))
    lower = d[best - 1] if best > 0 else d[0] - 1e-3
    upper = d[best] if best < len(d) else d[-1] + 1e-3
    return float((lower + upper) / 2.0), float(candidates[best] / len(d))


def choose_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The accuracy-maximising threshold over the pairs that have a distance."""
    valid = ~np.isnan(distances)
    return best_threshold(distances[valid], same[valid])[0]


def accuracy_counting_failures(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Accuracy where a pair without a distance (no face found) counts as wrong."""
    valid = ~np.isnan(distances)
    correct = (distances[valid] <= threshold) == same[valid]
    return float(correct.sum() / len(distances))


def engine_embedder(engine) -> Callable[[Image.Image], np.ndarray | None]:
    """Embed a photo's primary face the way the service does; None when no face is found."""

    def embed(image: Image.Image) -> np.ndarray | None:
        found = engine.detect(image)
        if found.primary is None:
            return None
        return engine.embed([found.primary.crop]).vectors[0]

    return embed


def place_on_canvas(photo: Image.Image, size: tuple[int, int], name: str) -> Image.Image:
    """Upscale ``photo`` onto the centre of a ``size`` background seeded by ``name``."""
    width, height = size
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    blobs = rng.integers(40, 220, size=(6, 8, 3), dtype=np.uint8)
    background = np.asarray(
        Image.fromarray(blobs).resize((width, height), Image.BICUBIC), dtype=np.int16
    )
    tile = rng.normal(0.0, 6.0, size=(256, 256, 1)).astype(np.int16)
    noise = np.tile(tile, (height // 256 + 1, width // 256 + 1, 1))[:height, :width]
    canvas = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    side = max(1, round(height * PHOTO_HEIGHT))
    scaled = photo.resize((round(photo.width * side / photo.height), side), Image.BICUBIC)
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas
