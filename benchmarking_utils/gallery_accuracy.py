"""LFW accuracy of gallery scoring: verifying against several references, and identifying (1:N).

Every LFW image is embedded once (primary face, the settings given) and cached by
``benchmarking_utils.lfw_embeddings``; images without a detected face are left out and counted.
Three measurements, one subcommand each, scored with ``gallery_scoring`` (the routes' code):

* ``rules``: the people with at least 4 images with a face enrol their first 3 (by image number);
  each of their other images is verified against its own subject (genuine) and against
  ``--impostors`` other subjects drawn at random (seed fixed) from the same half of the people
  (impostor). Thresholds are chosen on one half of the people (alternate names in sorted order)
  and reported on the other: balanced accuracy, FAR and FRR, TAR at FAR 1e-3, per rule
  (``nearest``, ``centroid``, ``knn`` with the whole enrolled gallery as neighbours).
* ``identify``: the gallery is the first image of each person with at least 2 images with a
  face; probes are their other images (known) and the images of people with one (unknown).
  Closed-set rank-1 and rank-5; open-set detection and identification rate (DIR) at a false-alarm
  rate of 1% and at the 1:1 default threshold; false alarms against the gallery's size.
* ``check40``: 40 people (seed fixed) with at least 2 images enrol their first and are identified
  from their second: rank-1.

    python -m benchmarking_utils.gallery_accuracy rules --out docs/results/gallery_rules.json
    python -m benchmarking_utils.gallery_accuracy identify --out docs/results/gallery_identify.json
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
from deployment_utils.configs import Config, parse_config
from deployment_utils.lfw import (
    GET_LFW,
    LfwEmbeddings,
    embed_lfw,
    lfw_dir,
    lfw_images,
    person_of,
    settings_key,
)
from facematch.decision import gallery_scoring
from facematch.decision import scores as score_service

REPO = Path(__file__).resolve().parents[1]
ONE_TO_ONE = score_service.default_threshold("cosine")
GRID = np.round(np.arange(0.2, 1.2 + 1e-9, 0.001), 4)  # thresholds swept for the rules
TARGET_FAR = 1e-3
ALARM_RATE = 0.01
# name: (rule, k, whether an impostor's own references stay in the gallery for knn)
RULES = {
    "nearest": ("nearest", 0, True),
    "centroid": ("centroid", 0, True),
    "knn k=3": ("knn", 3, False),
    "knn k=3, impostor enrolled": ("knn", 3, True),
    "knn k=1": ("knn", 1, False),
    "knn k=5": ("knn", 5, False),
}
GALLERY_SIZES = (10, 100, 1000)
CHECK_PEOPLE, CHECK_SEED = 40, 40


# ---- verifying against several references --------------------------------------------------


def rule_trials(emb: LfwEmbeddings, enrol: int, min_images: int, impostors: int, seed: int):
    """The enrolled gallery and the trials of the rules measurement (see the module doc).

    Returns (gallery rows, gallery subject index, subject names, trials per half), each half's
    trials as a dict of arrays: ``probe`` (row), ``own`` (the probe's subject index), ``claim``
    (the claimed subject index), ``genuine``."""
    people = emb.people()
    eligible = sorted(p for p, rows in people.items() if len(rows) >= min_images)
    index = {p: i for i, p in enumerate(eligible)}
    gallery = np.array([r for p in eligible for r in people[p][:enrol]])
    owner = np.array([index[p] for p in eligible for _ in range(enrol)])
    rng = np.random.default_rng(seed)
    halves = {}
    for half, members in (("tune", eligible[0::2]), ("test", eligible[1::2])):
        ids = np.array([index[p] for p in members])
        probe, own, claim, genuine = [], [], [], []
        for p in members:
            for row in people[p][enrol:]:
                others = rng.choice(ids[ids != index[p]], size=impostors, replace=False)
                probe += [row] * (1 + impostors)
                own += [index[p]] * (1 + impostors)
                claim += [index[p], *others.tolist()]
                genuine += [True] + [False] * impostors
        halves[half] = {
            "people": len(members),
            "probe": np.array(probe),
            "own": np.array(own),
            "claim": np.array(claim),
            "genuine": np.array(genuine),
        }
    return gallery, owner, eligible, halves


def rule_decisions(
    emb: LfwEmbeddings,
    gallery: np.ndarray,
    owner: np.ndarray,
    trials: dict,
    rule: str,
    k: int,
    impostor_enrolled: bool,
) -> np.ndarray:
    """Each trial's decision at each threshold of ``GRID``: a (thresholds, trials) bool array.

    ``nearest`` and ``centroid`` take each trial's distance from ``gallery_scoring.verify``;
    ``knn`` votes with ``gallery_scoring.knn_match`` among the probe's k nearest enrolled
    faces (of every subject); unless ``impostor_enrolled``, an impostor trial's neighbours leave
    out the probe's own subject's faces, as if the impostor were not in the gallery."""
    faces = emb.vectors[gallery]
    claim = trials["claim"]
    if rule in ("nearest", "centroid"):
        refs = {int(s): faces[owner == s] for s in np.unique(claim)}
        score = np.array(
            [
                gallery_scoring.verify(
                    emb.vectors[p], refs[int(c)], ONE_TO_ONE, gallery_scoring.VerifyRule(rule)
                ).distance
                for p, c in zip(trials["probe"], claim)
            ]
        )
        return score[None, :] <= GRID[:, None]
    probes, inverse = np.unique(trials["probe"], return_inverse=True)
    d = np.stack([gallery_scoring.face_distances(emb.vectors[p], faces) for p in probes])
    own = np.zeros(len(probes), dtype=int)
    own[inverse] = trials["own"]
    without_own = np.where(owner[None, :] == own[:, None], np.inf, d)
    hide = ~trials["genuine"] & (not impostor_enrolled)
    nearest = np.where(hide[:, None], top(without_own, k)[inverse], top(d, k)[inverse])
    near_d = d[inverse[:, None], nearest]
    mine = owner[nearest] == claim[:, None]
    chunks = [
        gallery_scoring.knn_match(near_d[None], mine[None], part[:, None])[0]
        for part in np.array_split(GRID, 20)  # (thresholds, trials, k) in pieces: memory
    ]
    return np.concatenate(chunks)


def top(d: np.ndarray, k: int) -> np.ndarray:
    """The column indices of each row's ``k`` smallest values, smallest first."""
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def rates(decisions: np.ndarray, genuine: np.ndarray) -> dict[str, np.ndarray]:
    """TAR, FAR, FRR, balanced and plain accuracy at each threshold of the grid."""
    tar = decisions[:, genuine].mean(axis=1)
    far = decisions[:, ~genuine].mean(axis=1)
    correct = (decisions == genuine[None, :]).mean(axis=1)
    return {"tar": tar, "far": far, "frr": 1 - tar, "balanced": (tar + 1 - far) / 2, "acc": correct}


def best_index(values: np.ndarray) -> int:
    """The middle of the first run of grid thresholds where ``values`` is highest."""
    best = values.max()
    first = int(np.argmax(values == best))
    last = first
    while last + 1 < len(values) and values[last + 1] == best:
        last += 1
    return (first + last) // 2


def at(r: dict, i: int) -> dict:
    """The rates at grid index ``i``, rounded for the report."""
    return {
        "threshold": float(GRID[i]),
        "balanced_accuracy": round(float(r["balanced"][i]), 4),
        "accuracy": round(float(r["acc"][i]), 4),
        "far": round(float(r["far"][i]), 5),
        "frr": round(float(r["frr"][i]), 4),
    }


def tar_at_far(r: dict, target: float) -> tuple[int, dict]:
    """The grid index with the highest TAR whose FAR is at most ``target``, and that point."""
    ok = r["far"] <= target
    i = int(np.argmax(np.where(ok, r["tar"], -1)))
    return i, {
        "threshold": float(GRID[i]),
        "tar": round(float(r["tar"][i]), 4),
        "far": round(float(r["far"][i]), 5),
    }


def rules_report(emb: LfwEmbeddings, impostors: int, seed: int) -> dict:
    """The rules measurement (module doc): per rule, the tuned threshold and the test figures."""
    gallery, owner, eligible, halves = rule_trials(emb, 3, 4, impostors, seed)
    result = {
        "people": len(eligible),
        "enrolled_faces": len(gallery),
        "impostors_per_probe": impostors,
        "seed": seed,
        "halves": {
            h: {
                "people": t["people"],
                "genuine_trials": int(t["genuine"].sum()),
                "impostor_trials": int((~t["genuine"]).sum()),
            }
            for h, t in halves.items()
        },
        "rules": {},
    }
    for name, (rule, k, enrolled) in tqdm(RULES.items(), desc="rules", unit="rule"):
        r = {
            h: rates(rule_decisions(emb, gallery, owner, t, rule, k, enrolled), t["genuine"])
            for h, t in halves.items()
        }
        chosen = best_index(r["tune"]["balanced"])
        far_index, _ = tar_at_far(r["tune"], TARGET_FAR)
        default = int(np.argmin(np.abs(GRID - ONE_TO_ONE)))
        result["rules"][name] = {
            "rule": rule,
            "k": k or None,
            "impostor_enrolled": enrolled,
            "tuned_threshold": float(GRID[chosen]),
            "tune": at(r["tune"], chosen),
            "test": at(r["test"], chosen),
            "test_tar_at_far_1e-3": tar_at_far(r["test"], TARGET_FAR)[1],
            "test_at_tune_far_1e-3_threshold": {
                "threshold": float(GRID[far_index]),
                "tar": round(float(r["test"]["tar"][far_index]), 4),
                "far": round(float(r["test"]["far"][far_index]), 5),
            },
            "test_at_1to1_default": at(r["test"], default),
        }
    return result


def rules_table(report: dict) -> str:
    rows = [
        "| rule | threshold (tuned) | balanced accuracy | FAR | FRR | TAR @ FAR 1e-3 "
        f"| FAR / FRR at {ONE_TO_ONE} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["rules"].items():
        t, d, roc = r["test"], r["test_at_1to1_default"], r["test_tar_at_far_1e-3"]
        rows.append(
            f"| {name} | {r['tuned_threshold']:.3f} | {100 * t['balanced_accuracy']:.2f}% "
            f"| {100 * t['far']:.2f}% | {100 * t['frr']:.2f}% | {100 * roc['tar']:.2f}% "
            f"(t={roc['threshold']:.3f}) | {100 * d['far']:.2f}% / {100 * d['frr']:.2f}% |"
        )
    return "\n".join(rows)


# ---- identifying (1:N, open set) ---------------------------------------------------------


def identify_split(emb: LfwEmbeddings, all_names: list[str]) -> dict:
    """Gallery rows (one per person with at least 2 images with a face), known probe rows and
    their subject, unknown probe rows, and the counts behind them."""
    on_disk: dict[str, int] = {}
    for name in all_names:
        on_disk[person_of(name)] = on_disk.get(person_of(name), 0) + 1
    people = emb.people()
    enrolled = sorted(p for p, rows in people.items() if len(rows) >= 2)
    single = sorted(p for p, rows in people.items() if len(rows) == 1)
    known = [(r, i) for i, p in enumerate(enrolled) for r in people[p][1:]]
    return {
        "subjects": enrolled,
        "gallery": np.array([people[p][0] for p in enrolled]),
        "known": np.array([r for r, _ in known]),
        "truth": np.array([i for _, i in known]),
        "unknown": np.array([people[p][0] for p in single]),
        "counts": {
            "people_on_disk": len(on_disk),
            "people_with_2_images_on_disk": sum(n >= 2 for n in on_disk.values()),
            "people_with_1_image_on_disk": sum(n == 1 for n in on_disk.values()),
            "people_with_2_faces": len(enrolled),
            "people_with_1_face": len(single),
            "of_which_have_2_images_on_disk": sum(on_disk[p] >= 2 for p in single),
            "people_without_any_face": len(on_disk) - len(people),
            "known_probes": len(known),
            "unknown_probes": len(single),
        },
    }


def search(emb: LfwEmbeddings, rows: np.ndarray, faces: np.ndarray, subjects: list[str], label):
    """``gallery_scoring.identify`` (top 5, at the 1:1 threshold) for each probe row."""
    return [
        gallery_scoring.identify(
            gallery_scoring.face_distances(emb.vectors[r], faces), subjects, ONE_TO_ONE, 5
        )
        for r in tqdm(rows, desc=label, unit="probe", mininterval=5)
    ]


def alarm_threshold(best: np.ndarray, rate: float) -> float:
    """The highest threshold (4 decimals) at which at most ``rate`` of the unknown probes'
    best distances are within it."""
    d = np.sort(best)
    allowed = int(np.floor(rate * len(d)))
    if allowed >= len(d):
        return float(d[-1])
    upper = d[allowed]  # accepting this one would exceed the rate
    t = np.floor(upper * 1e4) / 1e4
    return float(t - 1e-4 if t >= upper else t)


def open_set(known: list, truth: list[str], unknown_best: np.ndarray, t: float) -> dict:
    """DIR (rank-1 right and within ``t``) of the known probes, FAR of the unknown ones."""
    right = np.array([r.candidates[0].subject == s for r, s in zip(known, truth)])
    best = np.array([r.candidates[0].distance for r in known])
    return {
        "threshold": round(t, 4),
        "dir": round(float((right & (best <= t)).mean()), 4),
        "far": round(float((unknown_best <= t).mean()), 4),
    }


def identify_report(emb: LfwEmbeddings, all_names: list[str], seed: int) -> dict:
    """The identification measurement (module doc)."""
    split = identify_split(emb, all_names)
    subjects, faces = split["subjects"], emb.vectors[split["gallery"]]
    truth = [subjects[i] for i in split["truth"]]
    known = search(emb, split["known"], faces, subjects, "known probes")
    unknown = search(emb, split["unknown"], faces, subjects, "unknown probes")
    unknown_best = np.array([r.candidates[0].distance for r in unknown])
    rank1 = np.mean([r.candidates[0].subject == s for r, s in zip(known, truth)])
    rank5 = np.mean([s in {c.subject for c in r.candidates} for r, s in zip(known, truth)])
    chosen = alarm_threshold(unknown_best, ALARM_RATE)
    # The same choice made on half of the unknown probes and checked on the other half.
    half_t = alarm_threshold(unknown_best[0::2], ALARM_RATE)
    # False alarms against the gallery's size: each unknown probe against N random subjects.
    pairs = np.stack(
        [gallery_scoring.face_distances(emb.vectors[r], faces) for r in split["unknown"]]
    )
    p = float((pairs <= ONE_TO_ONE).mean())
    known_pairs = np.stack(
        [gallery_scoring.face_distances(emb.vectors[r], faces) for r in split["known"]]
    )
    rng = np.random.default_rng(seed)
    sizes = []
    for n in [*(n for n in GALLERY_SIZES if n < len(subjects)), len(subjects)]:
        pick = np.sort(rng.choice(len(subjects), size=n, replace=False))
        best = pairs[:, pick].min(axis=1)
        t = alarm_threshold(best, ALARM_RATE)
        mine = np.isin(split["truth"], pick)  # known probes whose subject is in this gallery
        d = known_pairs[np.ix_(mine, pick)]
        right = pick[d.argmin(axis=1)] == split["truth"][mine]
        sizes.append(
            {
                "subjects": n,
                "known_probes": int(mine.sum()),
                "far_at_1to1_default": round(float((best <= ONE_TO_ONE).mean()), 4),
                "predicted_1_minus_1_minus_p_to_n": round(1 - (1 - p) ** n, 4),
                "threshold_at_far_1pct": t,
                "dir_at_far_1pct": round(float((right & (d.min(axis=1) <= t)).mean()), 4),
            }
        )
    return {
        **split["counts"],
        "gallery_subjects": len(subjects),
        "closed_set": {"rank1": round(float(rank1), 4), "rank5": round(float(rank5), 4)},
        "open_set_at_far_1pct": open_set(known, truth, unknown_best, chosen),
        "open_set_at_1to1_default": open_set(known, truth, unknown_best, ONE_TO_ONE),
        "far_1pct_threshold_check": {
            "threshold_on_even_unknowns": half_t,
            "far_on_odd_unknowns": round(float((unknown_best[1::2] <= half_t).mean()), 4),
        },
        "per_comparison_false_accept_at_1to1_default": round(p, 5),
        "false_alarms_by_gallery_size": sizes,
        "recommended_identify_threshold": chosen,
    }


def identify_table(report: dict) -> str:
    a, d = report["open_set_at_far_1pct"], report["open_set_at_1to1_default"]
    c = report["closed_set"]
    return "\n".join(
        [
            "| gallery | known probes | unknown probes | rank-1 | rank-5 "
            "| DIR @ FAR 1% (threshold) | DIR / FAR at the 1:1 default |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {report['gallery_subjects']} | {report['known_probes']} "
            f"| {report['unknown_probes']} | {100 * c['rank1']:.2f}% | {100 * c['rank5']:.2f}% "
            f"| {100 * a['dir']:.2f}% ({a['threshold']}) "
            f"| {100 * d['dir']:.2f}% / {100 * d['far']:.2f}% ({d['threshold']}) |",
        ]
    )


# ---- the 40-person check -------------------------------------------------------------------


def check_names(root: Path, people: int = CHECK_PEOPLE, seed: int = CHECK_SEED) -> list[str]:
    """The first two images (by number) of ``people`` persons with at least 2 images, chosen
    with ``seed``."""
    by_person: dict[str, list[str]] = {}
    for name in lfw_images(root):
        by_person.setdefault(person_of(name), []).append(name)
    eligible = sorted(p for p, names in by_person.items() if len(names) >= 2)
    chosen = np.random.default_rng(seed).choice(len(eligible), size=people, replace=False)
    return [n for i in sorted(chosen) for n in by_person[eligible[i]][:2]]


def check_report(emb: LfwEmbeddings, names: list[str], threshold: float) -> dict:
    """Enrol each person's first image, identify each from the second; a missing face is a
    miss. Rank-1 and the share identified at ``threshold``."""
    have = set(emb.names)
    index = {n: i for i, n in enumerate(emb.names)}
    firsts, seconds = names[0::2], names[1::2]
    enrolled = [n for n in firsts if n in have]
    faces = emb.vectors[[index[n] for n in enrolled]]
    subjects = [person_of(n) for n in enrolled]
    rank1 = identified = 0
    for probe in seconds:
        if probe not in have or not enrolled:
            continue
        d = gallery_scoring.face_distances(emb.vectors[index[probe]], faces)
        found = gallery_scoring.identify(d, subjects, threshold, top_k=1)
        rank1 += found.candidates[0].subject == person_of(probe)
        identified += found.identified == person_of(probe)
    return {
        "people": len(seconds),
        "seed": CHECK_SEED,
        "without_face": sorted(emb.without_face),
        "rank1": round(rank1 / len(seconds), 4),
        "identified_at_threshold": round(identified / len(seconds), 4),
        "threshold": threshold,
    }


# ---- the command -----------------------------------------------------------------------------


def first_people(names: list[str], measurement: str, people: int) -> list[str]:
    """All images, or for smoke runs (``people`` > 0) those of the first ``people`` persons (in
    sorted order) with at least 4 images (``rules``), or with at least 2 and with 1
    (``identify``)."""
    if not people:
        return names
    by_person: dict[str, list[str]] = {}
    for name in names:
        by_person.setdefault(person_of(name), []).append(name)
    kinds = [lambda n: n >= 4] if measurement == "rules" else [lambda n: n >= 2, lambda n: n == 1]
    keep = [p for kind in kinds for p in [p for p in by_person if kind(len(by_person[p]))][:people]]
    return sorted(n for p in keep for n in by_person[p])


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measurement", choices=("rules", "identify", "check40"))
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder")
    parser.add_argument(
        "--config", default="default:", help="NAME:key=value,... on top of the environment"
    )
    parser.add_argument(
        "--impostors", type=int, default=50, help="rules: impostor claims per probe"
    )
    parser.add_argument("--seed", type=int, default=0, help="random impostors and subsets")
    parser.add_argument(
        "--threshold",
        type=float,
        default=gallery_scoring.DEFAULT_IDENTIFY_THRESHOLD,
        help="check40: the identify threshold for the share identified",
    )
    parser.add_argument(
        "--people",
        type=int,
        default=0,
        help="rules, identify: only the first N people of each kind the measurement uses (smoke "
        "runs; 0 = all)",
    )
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if not (args.lfw / "images").is_dir():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    started = time.time()
    config: Config = parse_config(args.config)
    if args.measurement == "check40":
        names = check_names(args.lfw)
        emb = embed_lfw(config.settings, args.lfw, names, label="check40")
        result = check_report(emb, names, args.threshold)
        table = json.dumps(result)
    else:
        all_names = first_people(lfw_images(args.lfw), args.measurement, args.people)
        label = f"{args.measurement}-{args.people}" if args.people else "all"
        emb = embed_lfw(config.settings, args.lfw, all_names, label=label)
        print(f"{len(emb.names)} images with a face, {len(emb.without_face)} without", flush=True)
        if args.measurement == "rules":
            result = rules_report(emb, args.impostors, args.seed)
            table = rules_table(result)
        else:
            result = identify_report(emb, all_names, args.seed)
            table = identify_table(result)
        result["images_with_face"] = len(emb.names)
        result["images_without_face"] = len(emb.without_face)
    report = {
        "what": f"LFW gallery accuracy ({args.measurement}), see gallery_accuracy.py",
        "date": datetime.date.today().isoformat(),
        "command": "python -m benchmarking_utils.gallery_accuracy "
        + " ".join(argv or sys.argv[1:]),
        "commit": commit(),
        "machine": machine(),
        "settings": {**config.describe(), "model": config.settings.model},
        "cache_key": settings_key(config.settings),
        "seconds": round(time.time() - started, 1),
        **result,
    }
    print(table)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
