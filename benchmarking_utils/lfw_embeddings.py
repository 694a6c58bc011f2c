"""The primary-face embedding of every LFW image, computed once per settings and cached on disk.

The gallery measurements (``benchmarking_utils.gallery_accuracy``) compare thousands of LFW
images with each other, so each image is embedded once, the way the service embeds a photo
(decode, detect, the primary face's crop, embed), and kept in
``benchmark_results/cache/lfw-embeddings-<key>.npz``. The key is a hash of the settings that
change an embedding, so a rerun under the same settings is instant and other settings get their
own file. A long run saves a checkpoint every few hundred images and resumes from it.

    python -m benchmarking_utils.lfw_embeddings          # embed all of LFW (about 9,000 images)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarking_utils.common import Config, embedder_tag, parse_config
from deployment_utils.lfw import GET_LFW, lfw_dir
from facematch.config import Settings
from facematch.engine.decoding import decode_image

REPO = Path(__file__).resolve().parents[1]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder")
    parser.add_argument(
        "--config", default="default:", help="NAME:key=value,... on top of the environment"
    )
    args = parser.parse_args(argv)
    if not (args.lfw / "images").is_dir():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    settings = parse_config(args.config).settings
    result = embed_lfw(settings, args.lfw)
    print(
        json.dumps(
            {
                "cache": str(cache_path(settings)),
                "images_with_face": len(result.names),
                "images_without_face": len(result.without_face),
                "people": len(result.people()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
