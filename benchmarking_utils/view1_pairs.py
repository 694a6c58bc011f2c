"""Settings compared on every same-person pair of LFW View 1's images, paired by person.

View 1's pair lists hold 1,600 same-person and 1,600 different-person pairs: one standard error
of an accuracy there is about 0.2 point, so settings a tenth of a point apart cannot be told
apart. This builds more pairs from the same images (View 1 only; View 2 stays for the reported
figure): every same-person pair among the images the View 1 lists name (at most
``--max-per-person`` per person, drawn with a fixed seed) and ``--different`` random
different-person pairs. Each image is embedded once per configuration (``accuracy``'s caches).

Each configuration gets its balanced accuracy at its best threshold (the mean of the true-accept
and true-reject rates: LFW's accuracy when the classes are balanced) and its equal error rate.
The uncertainty comes from a Poisson bootstrap over people, the same resample for every
configuration, so the difference of each configuration from the first is paired: most of the
noise (which people, which photos) cancels. A pair where an image has no face counts as wrong.

    python -m benchmarking_utils.view1_pairs --config today: \\
        --config int8:embed_backend=onnx-int8 --out docs/results/view1_pairs.json
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarking_utils.accuracy import Evaluator
from benchmarking_utils.common import machine, write_json
from deployment_utils.configs import parse_config
from deployment_utils.lfw import GET_LFW, lfw_dir, person_of, read_pairs


@dataclass(frozen=True)
class PairSet:
    """Pairs of images by index into ``names``; ``person_a``/``person_b`` index the people."""

    names: tuple[str, ...]
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    person_a: np.ndarray
    person_b: np.ndarray
    people: int


def view1_images(lfw: Path) -> list[str]:
    """Every image the View 1 lists (``pairsDevTrain.txt``, ``pairsDevTest.txt``) name, sorted."""
    pairs = read_pairs(lfw / "pairsDevTrain.txt") + read_pairs(lfw / "pairsDevTest.txt")
    return sorted({p.first for p in pairs} | {p.second for p in pairs})


def build_pairs(names: list[str], max_per_person: int, different: int, seed: int = 0) -> PairSet:
    """All same-person pairs of ``names`` (at most ``max_per_person`` a person, drawn with
    ``seed``) and ``different`` distinct random different-person pairs."""
    rng = np.random.default_rng(seed)
    people = sorted({person_of(n) for n in names})
    person_index = {p: i for i, p in enumerate(people)}
    of = np.array([person_index[person_of(n)] for n in names])
    first, second = [], []
    for p in range(len(people)):
        rows = np.flatnonzero(of == p)
        a, b = np.triu_indices(len(rows), k=1)
        if len(a) > max_per_person:
            keep = np.sort(rng.choice(len(a), max_per_person, replace=False))
            a, b = a[keep], b[keep]
        first.extend(rows[a])
        second.extend(rows[b])
    n_same = len(first)
    seen: set[tuple[int, int]] = set()
    while len(seen) < different:
        i, j = rng.integers(0, len(names), size=2)
        if of[i] != of[j]:
            seen.add((min(i, j), max(i, j)))
    for i, j in sorted(seen):
        first.append(i)
        second.append(j)
    first_a, second_a = np.array(first), np.array(second)
    same = np.arange(len(first_a)) < n_same
    return PairSet(tuple(names), first_a, second_a, same, of[first_a], of[second_a], len(people))


def pair_distances(vectors: dict[str, np.ndarray | None], pairs: PairSet) -> np.ndarray:
    """Cosine distance of each pair; a pair without a face gets the distance that makes its
    decision wrong (+inf for a same-person pair, -inf for a different-person one)."""
    dim = next(v for v in vectors.values() if v is not None).shape[0]
    matrix = np.stack([np.zeros(dim) if vectors[n] is None else vectors[n] for n in pairs.names])
    missing = np.array([vectors[n] is None for n in pairs.names])
    d = 1.0 - np.einsum("ij,ij->i", matrix[pairs.first], matrix[pairs.second])
    failed = missing[pairs.first] | missing[pairs.second]
    return np.where(failed, np.where(pairs.same, np.inf, -np.inf), d)


def rates(d: np.ndarray, same: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted (best balanced accuracy over all thresholds, equal error rate) of distances
    ``d`` (accept when at most the threshold) for pairs labelled ``same``; nan when a class
    has no weight."""
    order = np.argsort(d, kind="stable")
    w, y = weights[order], same[order]
    accepted_same = np.concatenate([[0.0], np.cumsum(np.where(y, w, 0.0))])
    accepted_diff = np.concatenate([[0.0], np.cumsum(np.where(y, 0.0, w))])
    if accepted_same[-1] == 0 or accepted_diff[-1] == 0:
        return float("nan"), float("nan")  # a resample without one of the classes
    tar = accepted_same / accepted_same[-1]
    far = accepted_diff / accepted_diff[-1]
    balanced = float(np.max((tar + 1.0 - far) / 2.0))
    frr = 1.0 - tar
    k = int(np.argmin(np.abs(far - frr)))
    return balanced, float((far[k] + frr[k]) / 2.0)


def bootstrap(
    distances: dict[str, np.ndarray], pairs: PairSet, resamples: int, seed: int = 1
) -> dict[str, np.ndarray]:
    """Per configuration, (balanced accuracy, EER) under each of ``resamples`` Poisson
    resamples of the people (a same-person pair weighs its person's count, a different-person
    pair the product of its two people's), shape (resamples, 2); the same resamples for all."""
    rng = np.random.default_rng(seed)
    out = {name: np.empty((resamples, 2)) for name in distances}
    for r in range(resamples):
        counts = rng.poisson(1.0, pairs.people).astype(np.float64)
        weights = np.where(
            pairs.same, counts[pairs.person_a], counts[pairs.person_a] * counts[pairs.person_b]
        )
        for name, d in distances.items():
            out[name][r] = rates(d, pairs.same, weights)
    return out


def summarise(distances: dict[str, np.ndarray], pairs: PairSet, samples: dict) -> dict:
    """Each configuration's figures on all pairs, their bootstrap standard errors, and its
    paired difference from the first configuration."""
    first = next(iter(distances))
    ones = np.ones(len(pairs.same))
    base = rates(distances[first], pairs.same, ones)[0]
    result = {}
    for name, d in distances.items():
        balanced, eer = rates(d, pairs.same, ones)
        diff = samples[name] - samples[first]
        result[name] = {
            "balanced_accuracy": round(balanced, 5),
            "balanced_accuracy_se": round(float(np.nanstd(samples[name][:, 0])), 5),
            "eer": round(eer, 5),
            "eer_se": round(float(np.nanstd(samples[name][:, 1])), 5),
            f"minus_{first}": {
                "balanced_accuracy": round(balanced - base, 5),
                "balanced_accuracy_se": round(float(np.nanstd(diff[:, 0])), 5),
                "share_not_worse": round(float(np.mean(diff[~np.isnan(diff[:, 0]), 0] >= 0)), 3),
                "eer_se": round(float(np.nanstd(diff[:, 1])), 5),
            },
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder")
    parser.add_argument(
        "--config", action="append", default=[], help="NAME:key=value,...; the first is the base"
    )
    parser.add_argument("--max-per-person", type=int, default=30, help="same-person pairs cap")
    parser.add_argument("--different", type=int, default=100_000, help="different-person pairs")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument(
        "--limit", type=int, default=0, help="about this many people's images (smoke runs)"
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTrain.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    started = time.time()
    names = view1_images(args.lfw)
    if args.limit:
        people = sorted({person_of(n) for n in names})
        kept = set(people[:: max(1, len(people) // args.limit)])
        names = [n for n in names if person_of(n) in kept]
    pairs = build_pairs(names, args.max_per_person, args.different)
    configs = [parse_config(c) for c in args.config] or [parse_config("default:")]
    ev = Evaluator(args.lfw, None, args.threads)
    distances = {
        c.name: pair_distances(ev.vectors(c, list(names), "View 1 images"), pairs) for c in configs
    }
    print(
        f"{int(pairs.same.sum())} same-person, {int((~pairs.same).sum())} different-person "
        f"pairs over {len(names)} images of {pairs.people} people; bootstrapping",
        flush=True,
    )
    samples = bootstrap(distances, pairs, args.resamples)
    results = summarise(distances, pairs, samples)
    for name, r in results.items():
        print(name, r, flush=True)
    write_json(
        args.out,
        {
            "what": "LFW View 1 images, all same-person pairs (capped) and random different-person "
            "pairs; balanced accuracy at the best threshold and EER; Poisson bootstrap over people",
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "command": "python -m benchmarking_utils.view1_pairs " + " ".join(argv or sys.argv[1:]),
            "seconds": round(time.time() - started, 1),
            "images": len(names),
            "pairs": {"same": int(pairs.same.sum()), "different": int((~pairs.same).sum())},
            "people": pairs.people,
            "settings": {c.name: c.describe() for c in configs},
            "configs": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
