"""LFW accuracy of the face engine under named settings: View 1 and View 2, ROC, TAR at FAR.

For each named configuration (``--config NAME:key=value,...``; the environment's settings when
none is given) this measures, with cosine distance:

* View 1: the accuracy-maximising threshold on ``pairsDevTrain.txt``, its DevTrain accuracy, a
  10-fold cross-validated DevTrain accuracy (the tuning figure), and DevTest accuracy at it;
* View 2 (``--view2``): 10-fold accuracy, each fold tested at the threshold chosen on the other
  nine, as mean and population standard deviation; TAR at FAR 1e-2 and 1e-3 over all 6,000
  pairs; ROC curves and distance histograms as PNGs (``--plots``).

Images without a face count as wrong decisions (and as rejections on the ROC). Detections and
embeddings are cached under ``benchmark_results/cache/`` so configurations that share a detector,
margin and backend reuse work: the flipped-image embedding of every crop is cached beside the
plain one. ``--size WxH`` runs on generated large photos (``benchmarking_utils.inputs``).

    python -m benchmarking_utils.accuracy --view2 --config fast: \\
        --config accurate:flip_embeddings=true,detect_max_side=0 --out docs/results/accuracy.json
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from benchmarking_utils.common import machine, write_json
from benchmarking_utils.inputs import parse_size, photo_bytes
from deployment_utils.configs import Config, embedder_tag, parse_config
from deployment_utils.lfw import (
    GET_LFW,
    Pair,
    accuracy_counting_failures,
    choose_threshold,
    lfw_dir,
    read_pairs,
)
from facematch.config import Settings
from facematch.decision.scores import default_threshold
from facematch.engine.decoding import DecodedPhoto, decode_photo
from facematch.engine.detection import Detections, rank_faces
from facematch.engine.engine import FaceEngine
from facematch.engine.options import EngineOptions

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmark_results" / "cache"
FARS = (1e-2, 1e-3)
BATCH = 8


class Cache:
    """A pickled dict under ``benchmark_results/cache``, saved every ``every`` new entries."""

    def __init__(self, key: str, every: int = 200):
        self.path = CACHE / f"{key}.pkl"
        self.data: dict = pickle.loads(self.path.read_bytes()) if self.path.exists() else {}
        self.every, self.pending = every, 0

    def put(self, key, value) -> None:
        self.data[key] = value
        self.pending += 1
        if self.pending >= self.every:
            self.save()

    def save(self) -> None:
        if self.pending:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(self.data))
            tmp.replace(self.path)
            self.pending = 0


class Evaluator:
    """Embeds LFW images under a configuration through the engine's own steps, with caches."""

    def __init__(
        self,
        lfw: Path,
        size: tuple[int, int] | None,
        threads: int,
        limit: int = 0,
        served_decode: bool = False,
    ):
        self.lfw, self.size, self.threads, self.limit = lfw, size, threads, limit
        self.served_decode = served_decode
        self.current: tuple[EngineOptions, FaceEngine] | None = None
        self.size_key = ("lfw" if size is None else f"{size[0]}x{size[1]}") + (
            "-served" if served_decode else ""
        )

    def engine(self, settings: Settings) -> FaceEngine:
        """An engine built from ``settings`` (at the evaluator's thread count); the last one is
        kept, so consecutive calls with the same engine options share it."""
        settings = settings.replace(torch_threads=self.threads)
        options = EngineOptions.from_settings(settings)
        if self.current is None or self.current[0] != options:
            self.current = (options, FaceEngine.from_settings(settings))
        return self.current[1]

    def image(self, name: str, engine: FaceEngine | None = None) -> Image.Image | DecodedPhoto:
        """The photo as Pillow opens it, or with ``--served-decode`` as the server decodes it
        (``decode_photo``: a large JPEG at the reduced scale the detector needs)."""
        data = photo_bytes(self.lfw, name, self.size).data
        if self.served_decode and engine is not None:
            side = engine.options.detect_max_side
            return decode_photo(data, Settings().max_pixels, name, side)
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

    def vectors(self, config: Config, names: list[str], label: str) -> dict[str, np.ndarray | None]:
        """The embedding of each image's primary face under ``config`` (None: no face)."""
        s = config.settings
        engine = self.engine(s)
        side = s.detect_max_side if s.detect_max_side < max(self.size or (250, 250)) else 0
        minimum = "" if s.min_face_size == 20 else f"-min{s.min_face_size}"
        detections = Cache(f"det-{s.detect_backend}-{side}{minimum}-{self.size_key}")
        aligned = "-aligned" if s.align_faces else ""
        embeddings = Cache(
            f"emb-{s.detect_backend}-{side}{minimum}-{self.size_key}-m{s.margin}"
            f"{aligned}-{embedder_tag(s.embed_backend)}"
        )
        result: dict[str, np.ndarray | None] = {}
        todo: list[tuple[str, tuple, np.ndarray]] = []
        for name in tqdm(names, desc=f"{config.name} {label}", unit="img", mininterval=5):
            key = self._primary_key(engine, detections, name)
            if key is None:
                result[name] = None
            elif key in embeddings.data:
                result[name] = self._combine(engine, embeddings.data[key], s.flip_embeddings)
            else:
                todo.append((name, key, self._crop_of(engine, detections, name)))
            if len(todo) >= BATCH:
                self._embed(engine, todo, embeddings, result, s.flip_embeddings)
                todo = []
        self._embed(engine, todo, embeddings, result, s.flip_embeddings)
        detections.save()
        embeddings.save()
        return result

    def _primary_key(self, engine: FaceEngine, detections: Cache, name: str) -> tuple | None:
        if name not in detections.data:
            found = engine.find_faces(self.image(name, engine))
            detections.put(name, (found.boxes, found.probs, found.landmarks))
        boxes, probs, _ = detections.data[name]
        if len(boxes) == 0:
            return None
        width, height = self.size or (250, 250)
        best = rank_faces(boxes, probs, width, height, engine.options.face_selection)[0]
        return (name, tuple(round(float(v), 3) for v in boxes[best]))

    def _crop_of(self, engine: FaceEngine, detections: Cache, name: str) -> np.ndarray:
        found = Detections(*detections.data[name])
        return engine.faces_from(self.image(name, engine), found)[0].crop

    @staticmethod
    def _combine(engine: FaceEngine, pair: tuple[np.ndarray, np.ndarray], flip: bool) -> np.ndarray:
        """The served embedding from the cached plain and mirrored vectors (the embedder's
        ``finish``)."""
        plain, flipped = pair
        return engine.embedder.finish(plain[None], flipped[None] if flip else None)[0]

    def _embed(self, engine, todo, embeddings: Cache, result: dict, flip: bool) -> None:
        if not todo:
            return
        batch = np.stack([crop for _, _, crop in todo])
        vectors = engine.embedder.forward(np.concatenate([batch, batch[:, :, :, ::-1]]))
        for i, (name, key, _) in enumerate(todo):
            pair = (vectors[i].copy(), vectors[len(todo) + i].copy())
            embeddings.put(key, pair)
            result[name] = self._combine(engine, pair, flip)


def limited(pairs: list[Pair], limit: int) -> list[Pair]:
    """All pairs, or (for smoke runs) every k-th so that about ``limit`` remain, folds kept."""
    return pairs if not limit or limit >= len(pairs) else pairs[:: len(pairs) // limit]


def distances(vectors: dict[str, np.ndarray | None], pairs: list[Pair]) -> np.ndarray:
    """Cosine distance per pair; ``nan`` where either image has no face."""
    out = np.full(len(pairs), np.nan)
    for i, p in enumerate(pairs):
        a, b = vectors[p.first], vectors[p.second]
        if a is not None and b is not None:
            out[i] = 1.0 - float(np.dot(a, b))
    return out


def kfold(d: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """Each fold tested at the threshold chosen on the others: mean, population std, per fold."""
    accs, thresholds = [], []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        t = choose_threshold(d[train], same[train])
        thresholds.append(t)
        accs.append(accuracy_counting_failures(d[test], same[test], t))
    return {
        "mean": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "folds": [round(a, 4) for a in accs],
        "thresholds": [round(t, 4) for t in thresholds],
    }


def roc(d: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true accept rates at every distinct threshold (no-face pairs never accepted)."""
    d = np.where(np.isnan(d), np.inf, d)
    thresholds = np.unique(d[np.isfinite(d)])
    order = np.argsort(d, kind="stable")
    ds, ys = d[order], same[order]
    accepted_same = np.cumsum(ys)
    accepted_diff = np.cumsum(~ys)
    idx = np.searchsorted(ds, thresholds, side="right") - 1
    tar = accepted_same[idx] / max(1, same.sum())
    far = accepted_diff[idx] / max(1, (~same).sum())
    return far, tar, thresholds


def tar_at_far(d: np.ndarray, same: np.ndarray, target: float) -> dict:
    """The highest TAR whose FAR is at most ``target``, and its threshold."""
    far, tar, thresholds = roc(d, same)
    ok = far <= target
    if not ok.any():
        return {"far": target, "tar": 0.0, "threshold": None}
    i = int(np.argmax(np.where(ok, tar, -1)))
    return {
        "far": target,
        "tar": round(float(tar[i]), 4),
        "threshold": round(float(thresholds[i]), 4),
        "achieved_far": round(float(far[i]), 5),
    }


def evaluate_view1(ev: Evaluator, config: Config) -> dict:
    train = limited(read_pairs(ev.lfw / "pairsDevTrain.txt"), ev.limit)
    test = limited(read_pairs(ev.lfw / "pairsDevTest.txt"), ev.limit)
    names = sorted({p.first for p in train + test} | {p.second for p in train + test})
    vectors = ev.vectors(config, names, "View 1")
    d_train, y_train = distances(vectors, train), np.array([p.same for p in train])
    d_test, y_test = distances(vectors, test), np.array([p.same for p in test])
    threshold = choose_threshold(d_train, y_train)
    default = default_threshold("cosine")
    folds = np.arange(len(train)) % 10
    return {
        "threshold": round(threshold, 4),
        "devtrain_accuracy": round(accuracy_counting_failures(d_train, y_train, threshold), 4),
        "devtrain_10fold": kfold(d_train, y_train, folds),
        "devtest_accuracy": round(accuracy_counting_failures(d_test, y_test, threshold), 4),
        "default_threshold": default,
        "devtest_accuracy_at_default_threshold": round(
            accuracy_counting_failures(d_test, y_test, default), 4
        ),
        "images_without_face": sum(vectors[n] is None for n in names),
    }


def evaluate_view2(ev: Evaluator, config: Config) -> tuple[dict, np.ndarray, np.ndarray]:
    pairs = limited(read_pairs(ev.lfw / "pairs.txt"), ev.limit)
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    vectors = ev.vectors(config, names, "View 2")
    d, y = distances(vectors, pairs), np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    result = {
        "accuracy_10fold": kfold(d, y, folds),
        "tar_at_far": [tar_at_far(d, y, far) for far in FARS],
        "images_without_face": sum(vectors[n] is None for n in names),
    }
    return result, d, y


def plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], outdir: Path, suffix: str) -> list[str]:
    """ROC (log FAR) of every configuration and the distance histogram of the first one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=80)
    for name, (d, y) in curves.items():
        far, tar, _ = roc(d, y)
        ax.plot(np.maximum(far, 1e-4), tar, label=name, lw=1.2)
    for far in FARS:
        ax.axvline(far, color="grey", lw=0.6, ls=":")
    ax.set(
        xscale="log",
        xlim=(3e-4, 1),
        ylim=(0.9, 1.001),
        xlabel="false accept rate",
        ylabel="true accept rate",
        title="LFW View 2 ROC (6,000 pairs)",
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = outdir / f"lfw_roc{suffix}.png"
    fig.savefig(path)
    written.append(str(path))
    plt.close(fig)

    name, (d, y) = next(iter(curves.items()))
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    bins = np.linspace(0, 1.4, 71)
    ax.hist(d[y & ~np.isnan(d)], bins=bins, alpha=0.6, label="same person")
    ax.hist(d[~y & ~np.isnan(d)], bins=bins, alpha=0.6, label="different people")
    ax.set(xlabel="cosine distance", ylabel="pairs", title=f"LFW View 2 distances ({name})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = outdir / f"lfw_distances{suffix}.png"
    fig.savefig(path)
    written.append(str(path))
    plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="NAME:key=value,... on top of the environment's settings",
    )
    parser.add_argument("--view2", action="store_true", help="also report View 2 (final runs)")
    parser.add_argument("--size", default="lfw", help="'lfw' or WxH for generated large photos")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument(
        "--served-decode",
        action="store_true",
        help="decode as the server does (a large JPEG at a reduced scale) instead of in full",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="about this many pairs per list (smoke runs; 0 = all)"
    )
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--plots", type=Path, help="write ROC and histogram PNGs to this folder")
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTrain.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    configs = [parse_config(c) for c in args.config] or [parse_config("default:")]
    ev = Evaluator(args.lfw, parse_size(args.size), args.threads, args.limit, args.served_decode)
    started = time.time()
    results, curves = {}, {}
    for config in configs:
        entry = {"settings": config.describe(), "view1": evaluate_view1(ev, config)}
        if args.view2:
            entry["view2"], d, y = evaluate_view2(ev, config)
            curves[config.name] = (d, y)
        results[config.name] = entry
        print(json.dumps({config.name: entry}), flush=True)
    report = {
        "what": "LFW accuracy, cosine distance; View 2 std is the population std over 10 folds",
        "inputs": args.size,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": "python -m benchmarking_utils.accuracy " + " ".join(argv or sys.argv[1:]),
        "seconds": round(time.time() - started, 1),
        "configs": results,
    }
    if args.plots and curves:
        args.plots.mkdir(parents=True, exist_ok=True)
        suffix = "" if args.size == "lfw" else f"_{args.size}"
        report["plots"] = plot(curves, args.plots, suffix)
    print(_table(results))
    write_json(args.out, report)
    return 0


def _table(results: dict) -> str:
    rows = [
        "| config | DevTrain 10-fold | DevTest @ DevTrain threshold | DevTest @ default threshold "
        "| View 2 mean ± std | TAR @ FAR 1e-2 | TAR @ FAR 1e-3 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        v1, v2 = r["view1"], r.get("view2")
        cells = [
            name,
            f"{100 * v1['devtrain_10fold']['mean']:.2f}%",
            f"{100 * v1['devtest_accuracy']:.2f}% (t={v1['threshold']})",
            f"{100 * v1['devtest_accuracy_at_default_threshold']:.2f}% "
            f"(t={v1['default_threshold']})",
        ]
        if v2:
            acc = v2["accuracy_10fold"]
            cells += [f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}%"]
            cells += [f"{100 * t['tar']:.2f}%" for t in v2["tar_at_far"]]
        else:
            cells += ["", "", ""]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
