"""LFW, the one data set module of the tools: the pair lists and images (reading the official
files, embedding the pairs, the accuracy-maximising threshold), the primary-face embedding of
every LFW image cached on disk, and the large photos made by pasting an LFW photo on a generated
background. The deployment tools (``calibration``), the benchmarks and the tests use it; it
imports only the runtime and ``deployment_utils.configs``, never ``benchmarking_utils``.

Layout (see ``shared/data/lfw/README.md``): ``images/<Name>/<Name>_NNNN.jpg`` and the pair files
``pairsDevTrain.txt``, ``pairsDevTest.txt`` (View 1) and ``pairs.txt`` (View 2, 10 folds).

The cached embeddings: the gallery measurements (``benchmarking_utils.gallery_accuracy``) and
the calibration tables compare thousands of LFW images with each other, so each image is
embedded once, the way the service embeds a photo (decode, detect, the primary face's crop,
embed), and kept in ``benchmark_results/cache/lfw-embeddings-<label>-<key>.npz``. The key is a
hash of the settings that change an embedding, so a rerun under the same settings is instant and
other settings get their own file. A long run saves a checkpoint every few hundred images and
resumes from it (``python -m benchmarking_utils.lfw_embeddings`` embeds all of LFW).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from deployment_utils.configs import Config, embedder_tag
from facematch.config import Settings
from facematch.decision import scores as score_service
from facematch.engine.decoding import decode_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LFW_DIR = REPO.parent / "shared" / "data" / "lfw"
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


CACHE = REPO / "benchmark_results" / "cache"
DIM = 512
BATCH = 16
CHECKPOINT_EVERY = 500


@dataclass(frozen=True)
class LfwEmbeddings:
    """Embeddings of LFW images: ``names`` (``<Name>/<Name>_NNNN.jpg``, sorted) with a face,
    their unit ``vectors`` (n, 512) float32 in the same order, and the images where no face
    was detected (excluded from every measurement)."""

    names: tuple[str, ...]
    vectors: np.ndarray
    without_face: tuple[str, ...]

    def people(self) -> dict[str, list[int]]:
        """Person -> row indices of that person's images with a face, in image-number order."""
        out: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            out.setdefault(person_of(name), []).append(i)
        return out

    def subset(self, names: list[str]) -> LfwEmbeddings:
        """These images only (those without a face stay listed as such)."""
        index = {n: i for i, n in enumerate(self.names)}
        keep = sorted(n for n in names if n in index)
        missing = set(self.without_face) & set(names)
        return LfwEmbeddings(
            tuple(keep),
            self.vectors[[index[n] for n in keep]].reshape(-1, DIM),
            tuple(sorted(missing)),
        )


def person_of(name: str) -> str:
    """The person of an image name ``<Name>/<Name>_NNNN.jpg``."""
    return name.split("/", 1)[0]


def lfw_images(root: Path) -> list[str]:
    """Every image under ``root/images`` as ``<Name>/<Name>_NNNN.jpg``, sorted by name and
    number."""
    return sorted(f"{path.parent.name}/{path.name}" for path in (root / "images").glob("*/*.jpg"))


def settings_key(settings: Settings) -> str:
    """A short hash of the settings that change an embedding (not threads or server options)."""
    described = Config("key", settings).describe()
    described.pop("torch_threads")
    described.update(
        model=settings.model,
        weights=settings.weights,
        embed_backend=embedder_tag(settings.embed_backend),
    )
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_path(settings: Settings, label: str = "all") -> Path:
    """Where the embeddings of ``label`` (``all`` of LFW, or a named subset) are cached."""
    return CACHE / f"lfw-embeddings-{label}-{settings_key(settings)}.npz"


def _load(path: Path) -> dict[str, np.ndarray | None]:
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as data:
        done: dict[str, np.ndarray | None] = dict(zip(data["names"].tolist(), data["vectors"]))
        done.update({name: None for name in data["without_face"].tolist()})
    return done


def _save(path: Path, done: dict[str, np.ndarray | None]) -> None:
    names = sorted(n for n, v in done.items() if v is not None)
    vectors = np.stack([done[n] for n in names]) if names else np.zeros((0, DIM), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        names=np.array(names, dtype=str),
        vectors=vectors.astype(np.float32),
        without_face=np.array(sorted(n for n, v in done.items() if v is None), dtype=str),
    )
    tmp.replace(path)


def embed_lfw(
    settings: Settings,
    root: Path,
    names: list[str] | None = None,
    label: str = "all",
    progress: bool = True,
) -> LfwEmbeddings:
    """The primary-face embeddings of ``names`` (default: every LFW image) under ``settings``.

    Takes the settings, the LFW folder, the images and a cache label; returns them as
    ``LfwEmbeddings``. Reads what the cache already holds (the ``all`` cache serves any subset)
    and embeds the rest with ``FaceEngine.from_settings(settings)``: decode, ``detect``, the
    primary face's crop, ``embed`` in batches.
    """
    names = lfw_images(root) if names is None else sorted(names)
    path = cache_path(settings, label)
    done = _load(path)
    if label != "all":  # a subset: what the full cache holds, and only this subset is saved
        merged = {**_load(cache_path(settings)), **done}
        done = {n: merged[n] for n in names if n in merged}
    todo = [n for n in names if n not in done]
    if todo:
        _embed_into(settings, root, todo, done, path, progress)
    found = tuple(n for n in names if done[n] is not None)
    vectors = np.stack([done[n] for n in found]) if found else np.zeros((0, DIM), np.float32)
    return LfwEmbeddings(found, vectors, tuple(n for n in names if done[n] is None))


def _embed_into(settings, root, todo, done, path, progress) -> None:
    from facematch.engine.engine import (
        FaceEngine,  # the model only when something is to be embedded
    )

    engine = FaceEngine.from_settings(settings)
    pending: list[tuple[str, object]] = []
    since_save = 0

    def flush() -> None:
        if pending:
            vectors = engine.embed([crop for _, crop in pending]).vectors
            done.update({name: v.copy() for (name, _), v in zip(pending, vectors)})
            pending.clear()

    bar = tqdm(todo, desc="embedding LFW", unit="img", mininterval=10, disable=not progress)
    for name in bar:
        image = decode_image((root / "images" / name).read_bytes(), settings.max_pixels, name)
        primary = engine.detect(image).primary
        if primary is None:
            done[name] = None
        else:
            pending.append((name, primary.crop))
        if len(pending) >= BATCH:
            flush()
        since_save += 1
        if since_save >= CHECKPOINT_EVERY:
            flush()
            _save(path, done)
            since_save = 0
    flush()
    _save(path, done)
