"""LFW accuracy of bursts (several samples of one person) against single photos, per fusion.

The people with at least 4 images with a face take part. Each image of a person is in turn the
reference (1:1) and the burst is the next ``n`` of that person's images (cyclically, in image
order) for ``n`` = 1, 2, 3; impostor trials pair each reference with ``--impostors`` bursts of
other people (drawn at random, seed fixed). Every burst goes through the service's consistency
check first (``fusion.spread`` beyond the verify threshold: refused, counted as a rejection;
an impostor burst refused is no false accept). The fusions compared:

* ``mean``: ``fusion.fuse``, the normalised mean of the unit embeddings (the service's);
* ``best``: the single sample whose face is best by the quality measures (the most frontal:
  least ``|yaw| + |pitch|``, then the sharpest), measured on each image and cached;
* ``vote``: each sample decides on its own; the median distance decides (a majority for odd n).

1:N: the gallery is the first image of each of those people; probes are bursts of their other
images (known), and bursts of the people with exactly 3 images (unknown, not enrolled). Rank-1
and the detection and identification rate (DIR) at a false-alarm rate of 1%. ``vote`` ranks
subjects by their median distance over the samples.

Figures at the service's default cosine threshold (FRR and FAR; FRR also of the bursts that pass
the consistency check, the fusion's own effect) and at a fixed FAR of 1e-3 (its threshold set
on each fusion's impostor distances), each with a 95% interval from a bootstrap
over people (``--rounds`` resamples of the persons, with all their trials), and the paired
differences (each burst against the single photo, each fusion against ``mean``) on the same
trials and resamples. Also: how often a
burst mixing the claimed person's image with a stranger's is refused as inconsistent.

    python -m benchmarking_utils.burst_accuracy --out docs/results/burst_accuracy.json

``--people N`` takes only the first N people of each kind (a quick check; the tests use it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarking_utils.common import machine, write_json
from deployment_utils.configs import parse_config
from deployment_utils.lfw import (
    CACHE,
    GET_LFW,
    embed_lfw,
    lfw_dir,
    lfw_images,
    person_of,
    settings_key,
)
from facematch.config import Settings
from facematch.decision import quality, scores
from facematch.decision.fusion import fuse, spread
from facematch.engine.decoding import decode_image

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = scores.default_threshold("cosine")
FUSIONS = ("mean", "best", "vote")
SIZES = (1, 2, 3)
TARGET_FAR = 1e-3
ALARM_RATE = 0.01
MIN_IMAGES = 4


# ---- quality of each image's primary face (for ``best``), cached ---------------------------


def frontal_scores(settings: Settings, root: Path, names: list[str]) -> dict[str, float]:
    """Image -> quality score of its primary face (higher is better: ``-(|yaw| + |pitch|)``
    plus a sharpness tie-break), measured once and cached beside the embeddings."""
    path = CACHE / f"lfw-quality-{settings_key(settings)}.json"
    done: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    todo = [n for n in names if n not in done]
    if todo:
        from facematch.engine.engine import FaceEngine  # the model only when needed

        engine = FaceEngine.from_settings(settings)
        for name in tqdm(todo, desc="face quality", unit="img", mininterval=10):
            image = decode_image((root / "images" / name).read_bytes(), settings.max_pixels)
            face = engine.detect(image).primary
            if face is None:
                done[name] = float("-inf")
                continue
            q = quality.measure(image, face.box, face.landmarks, face.probability)
            pose = abs(q.yaw or 0.0) + abs(q.pitch or 0.0)
            done[name] = -pose + 1e-6 * q.sharpness
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(done))
    return {n: done[n] for n in names}


# ---- fusions of one burst -------------------------------------------------------------------


def burst_distances(burst: np.ndarray, scores_: np.ndarray, references: np.ndarray) -> dict:
    """Fusion -> cosine distances from the burst (n, d) to each reference row (m, d)."""
    mean = fuse(burst)
    per_sample = 1.0 - references @ burst.T  # (m, n)
    return {
        "mean": 1.0 - references @ mean,
        "best": per_sample[:, int(np.argmax(scores_))],
        "vote": np.median(per_sample, axis=1),
    }


def consistent(burst: np.ndarray) -> bool:
    """The service's check: no two samples farther apart than the verify threshold."""
    return spread(burst, "cosine") <= THRESHOLD


# ---- statistics -----------------------------------------------------------------------------


def rate_with_interval(hits: np.ndarray, person: np.ndarray, rounds: int, seed: int) -> dict:
    """The share of ``hits`` and its 95% bootstrap interval over people (``person`` per trial)."""
    hits = np.asarray(hits, dtype=np.float64)
    ids, inverse = np.unique(person, return_inverse=True)
    sums = np.bincount(inverse, weights=hits, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(rounds, len(ids)))
    boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "rate": round(float(hits.mean()), 5),
        "ci95": [round(float(low), 5), round(float(high), 5)],
        "trials": int(hits.size),
    }


def far_threshold(impostor: np.ndarray, target: float) -> float:
    """The largest threshold whose share of impostor distances at or under it is <= target."""
    d = np.sort(impostor[np.isfinite(impostor)])
    allowed = int(np.floor(target * len(impostor)))
    return float(d[allowed] - 1e-9) if allowed < len(d) else float(d[-1])


# ---- 1:1 ------------------------------------------------------------------------------------


def verify_trials(vectors, people, qualities, impostors: int, seed: int) -> dict:
    """Per burst size and fusion: genuine and impostor distances (inf: refused as inconsistent)
    with the reference person of each trial; and the mixed bursts' refusal."""
    rng = np.random.default_rng(seed)
    names = sorted(people)
    out: dict = {}
    for n in SIZES:
        trials = {f: {"genuine": [], "impostor": []} for f in FUSIONS}
        owner = {"genuine": [], "impostor": []}
        refused = {"genuine": [], "impostor": []}
        mixed_refused = []
        for p_index, person in enumerate(names):
            rows = people[person]
            for i, ref in enumerate(rows):
                reference = vectors[[ref]]
                own = [rows[(i + 1 + k) % len(rows)] for k in range(n)]
                others = rng.choice(len(names) - 1, size=impostors, replace=False)
                strangers = [names[o + (o >= p_index)] for o in others]
                bursts = [("genuine", own)]
                for stranger in strangers:
                    srows = people[stranger]
                    start = int(rng.integers(len(srows)))
                    bursts.append(("impostor", [srows[(start + k) % len(srows)] for k in range(n)]))
                if n > 1:
                    mix = own[: n - 1] + [people[strangers[0]][0]]
                    mixed_refused.append(not consistent(vectors[mix]))
                for kind, burst_rows in bursts:
                    burst = vectors[burst_rows]
                    ok = consistent(burst)
                    found = burst_distances(burst, qualities[burst_rows], reference)
                    for f in FUSIONS:
                        trials[f][kind].append(float(found[f][0]) if ok else np.inf)
                    owner[kind].append(p_index)
                    refused[kind].append(not ok)
        out[n] = {
            "trials": {f: {k: np.array(v) for k, v in t.items()} for f, t in trials.items()},
            "owner": {k: np.array(v) for k, v in owner.items()},
            "refused": {k: np.array(v) for k, v in refused.items()},
            "mixed_refused": np.array(mixed_refused),
        }
    return out


def paired(hits: dict, owner: np.ndarray, rounds: int, seed: int) -> dict:
    """Size -> fusion -> figure -> the paired differences (same trials, same resampled people)
    of each burst fusion's errors minus the single photo's (``minus_single``) and minus
    ``mean``'s (``minus_mean``), with their intervals: negative is fewer errors."""
    out: dict = {}
    for n in SIZES[1:]:
        out[str(n)] = {
            f: {
                figure: {
                    "minus_single": rate_with_interval(
                        wrong.astype(float) - hits[1]["mean"][figure], owner, rounds, seed
                    ),
                    **(
                        {}
                        if f == "mean"
                        else {
                            "minus_mean": rate_with_interval(
                                wrong.astype(float) - hits[n]["mean"][figure], owner, rounds, seed
                            )
                        }
                    ),
                }
                for figure, wrong in hits[n][f].items()
            }
            for f in FUSIONS
        }
    return out


def verify_figures(found: dict, rounds: int, seed: int) -> dict:
    result: dict = {}
    hits: dict = {}
    for n, data in found.items():
        owner = data["owner"]
        per_fusion = {}
        hits[n] = {}
        for f in FUSIONS:
            genuine, impostor = data["trials"][f]["genuine"], data["trials"][f]["impostor"]
            at_far = far_threshold(impostor, TARGET_FAR)
            hits[n][f] = {"frr_default": genuine > THRESHOLD, "frr_at_far_1e-3": genuine > at_far}
            per_fusion[f] = {
                "frr_default": rate_with_interval(
                    genuine > THRESHOLD, owner["genuine"], rounds, seed
                ),
                "frr_default_of_consistent": rate_with_interval(
                    genuine[np.isfinite(genuine)] > THRESHOLD,
                    owner["genuine"][np.isfinite(genuine)],
                    rounds,
                    seed,
                ),
                "far_default": rate_with_interval(
                    impostor <= THRESHOLD, owner["impostor"], rounds, seed
                ),
                "threshold_far_1e-3": round(at_far, 4),
                "frr_at_far_1e-3": rate_with_interval(
                    genuine > at_far, owner["genuine"], rounds, seed
                ),
            }
        result[str(n)] = {
            "fusions": per_fusion,
            "refused_inconsistent": {
                k: rate_with_interval(v, owner[k], rounds, seed) for k, v in data["refused"].items()
            },
            "mixed_with_stranger_refused": (
                round(float(data["mixed_refused"].mean()), 5)
                if len(data["mixed_refused"])
                else None
            ),
        }
    result["paired_differences"] = paired(hits, found[1]["owner"]["genuine"], rounds, seed)
    return result


# ---- 1:N ------------------------------------------------------------------------------------


def identify_figures(vectors, people, unknown, qualities, rounds: int, seed: int) -> dict:
    """Rank-1 and DIR at a false-alarm rate of 1%, per burst size and fusion (see the doc)."""
    names = sorted(people)
    gallery = vectors[[people[p][0] for p in names]]
    result: dict = {}
    hits: dict = {}
    for n in SIZES:
        per_fusion = {}
        hits[n] = {}
        known: dict = {f: {"nearest": [], "correct": []} for f in FUSIONS}
        known_owner = []
        alarms: dict = {f: [] for f in FUSIONS}
        alarm_owner = []
        for p_index, person in enumerate(names):
            probes = people[person][1:]
            for i in range(len(probes)):
                rows = [probes[(i + k) % len(probes)] for k in range(n)]
                burst = vectors[rows]
                ok = consistent(burst)
                found = burst_distances(burst, qualities[rows], gallery)
                for f in FUSIONS:
                    best = int(np.argmin(found[f]))
                    known[f]["nearest"].append(float(found[f][best]) if ok else np.inf)
                    known[f]["correct"].append(ok and best == p_index)
                known_owner.append(p_index)
        for u_index, person in enumerate(sorted(unknown)):
            rows = unknown[person][:n]
            burst = vectors[rows]
            found = burst_distances(burst, qualities[rows], gallery)
            ok = consistent(burst)
            for f in FUSIONS:
                alarms[f].append(float(found[f].min()) if ok else np.inf)
            alarm_owner.append(u_index)
        for f in FUSIONS:
            nearest = np.array(known[f]["nearest"])
            correct = np.array(known[f]["correct"])
            unknown_nearest = np.array(alarms[f])
            at_alarm = far_threshold(unknown_nearest, ALARM_RATE)
            hits[n][f] = {"missed_at_alarm_1pct": ~(correct & (nearest <= at_alarm))}
            per_fusion[f] = {
                "rank1": rate_with_interval(correct, np.array(known_owner), rounds, seed),
                "threshold_alarm_1pct": round(at_alarm, 4),
                "dir_at_alarm_1pct": rate_with_interval(
                    correct & (nearest <= at_alarm), np.array(known_owner), rounds, seed
                ),
            }
        result[str(n)] = {
            "fusions": per_fusion,
            "known_probes": len(known_owner),
            "unknown_probes": len(alarm_owner),
        }
    result["paired_differences"] = paired(hits, np.array(known_owner), rounds, seed)
    return result


# ---- the command ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder")
    parser.add_argument("--config", default="default:", help="NAME:key=value,...")
    parser.add_argument("--impostors", type=int, default=10, help="impostor bursts per reference")
    parser.add_argument("--rounds", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--people", type=int, help="only the first N people of each kind")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if not (args.lfw / "images").is_dir():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    settings = parse_config(args.config).settings
    start = time.perf_counter()
    commit = _commit()
    names = chosen_images(lfw_images(args.lfw), args.people)
    label = "all" if args.people is None else f"burst-{args.people}"
    emb = embed_lfw(settings, args.lfw, names, label)
    vectors = emb.vectors.astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    all_people = emb.people()
    people = {p: r for p, r in all_people.items() if len(r) >= MIN_IMAGES}
    unknown = {p: r for p, r in all_people.items() if len(r) == 3}
    scored = frontal_scores(settings, args.lfw, list(emb.names))
    qualities = np.array([scored.get(name, float("-inf")) for name in emb.names])
    found = verify_trials(vectors, people, qualities, args.impostors, args.seed)
    result = {
        "command": "python -m benchmarking_utils.burst_accuracy " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": machine(),
        "config": args.config,
        "threshold": THRESHOLD,
        "people": len(people),
        "images": sum(len(r) for r in people.values()),
        "unknown_people": len(unknown),
        "impostors_per_reference": args.impostors,
        "bootstrap_rounds": args.rounds,
        "verify": verify_figures(found, args.rounds, args.seed),
        "identify": identify_figures(vectors, people, unknown, qualities, args.rounds, args.seed),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    write_json(args.out, result)
    return 0


def chosen_images(names: list[str], people: int | None) -> list[str]:
    """The images of the people with at least ``MIN_IMAGES`` images and of those with exactly
    3 (the unknown probes), or only the first ``people`` of each (in name order)."""
    by_person: dict[str, list[str]] = {}
    for name in names:
        by_person.setdefault(person_of(name), []).append(name)
    known = sorted(p for p, images in by_person.items() if len(images) >= MIN_IMAGES)
    unknown = sorted(p for p, images in by_person.items() if len(images) == 3)
    if people is not None:
        known, unknown = known[:people], unknown[:people]
    return sorted(name for p in (*known, *unknown) for name in by_person[p])


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
