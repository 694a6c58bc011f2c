"""The gallery accuracy command end to end: the 40-person identification check on LFW, and the
rules and identify measurements on a few people (their figures are in docs/results; here only
that they were taken and are consistent)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_forty_enrolled_lfw_people_are_identified_from_another_photo(run_benchmark, tmp_path):
    report = run_benchmark("gallery_accuracy", tmp_path / "check40.json", "check40")
    assert report["people"] == 40
    assert report["rank1"] >= 0.95, report


def test_rules_command_measures_every_rule_on_both_halves(run_benchmark, tmp_path):
    report = run_benchmark(
        "gallery_accuracy", tmp_path / "rules.json", "rules", "--people", "8", "--impostors", "3"
    )
    assert report["people"] == 8 and report["enrolled_faces"] == 24
    for half in report["halves"].values():
        assert half["people"] == 4
        assert half["impostor_trials"] == 3 * half["genuine_trials"] > 0
    assert {"nearest", "centroid", "knn k=3"} <= set(report["rules"])
    for rule in report["rules"].values():
        for figure in ("balanced_accuracy", "far", "frr"):
            assert 0 <= rule["test"][figure] <= 1
        assert rule["test_tar_at_far_1e-3"]["far"] <= 1e-3
    assert report["commit"] and report["date"] and report["machine"]
    assert report["command"].startswith("python -m benchmarking_utils.gallery_accuracy rules")


def test_identify_command_reports_closed_and_open_set_figures(run_benchmark, tmp_path):
    report = run_benchmark(
        "gallery_accuracy", tmp_path / "identify.json", "identify", "--people", "10"
    )
    assert report["gallery_subjects"] == 10 and report["unknown_probes"] == 10
    closed = report["closed_set"]
    assert 0 < closed["rank1"] <= closed["rank5"] <= 1
    assert report["open_set_at_far_1pct"]["far"] <= 0.01
    assert report["recommended_identify_threshold"] == report["open_set_at_far_1pct"]["threshold"]
    sizes = report["false_alarms_by_gallery_size"]
    assert [s["subjects"] for s in sizes] == [10]


def synthetic_lfw(people: int = 12, images: int = 6, seed: int = 1):
    """Embeddings of ``people`` persons with ``images`` each: a random direction per person,
    plus noise, so that some impostors come near and some genuine images stray."""
    from deployment_utils.lfw import LfwEmbeddings

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, 16))
    names, vectors = [], []
    for p in range(people):
        for i in range(images):
            names.append(f"P{p:02d}/P{p:02d}_{i + 1:04d}.jpg")
            v = centres[p] + rng.normal(scale=1.2, size=16)
            vectors.append(v / np.linalg.norm(v))
    return LfwEmbeddings(tuple(names), np.array(vectors), ())


@pytest.mark.parametrize("enrolled", [True, False])
def test_the_vectorised_knn_sweep_decides_as_gallery_scoring_verify(enrolled):
    from benchmarking_utils.gallery_accuracy import GRID, rule_decisions, rule_trials
    from facematch.decision.gallery_scoring import Neighbour, VerifyRule, verify

    emb = synthetic_lfw()
    gallery, owner, _, halves = rule_trials(emb, 3, 4, impostors=4, seed=0)
    trials = halves["test"]
    decisions = rule_decisions(emb, gallery, owner, trials, "knn", 3, enrolled)
    faces = emb.vectors[gallery]
    checked = set()
    for t in (0.4, 0.6, 0.8):
        row = int(np.argmin(np.abs(GRID - t)))
        for i, (probe, own, claim) in enumerate(
            zip(trials["probe"], trials["own"], trials["claim"])
        ):
            hidden = not enrolled and own != claim
            neighbours = [
                Neighbour(str(s), float(d))
                for s, d in zip(owner, 1 - faces @ emb.vectors[probe])
                if not (hidden and s == own)
            ]
            expected = verify(
                emb.vectors[probe],
                faces[owner == claim],
                float(GRID[row]),
                VerifyRule("knn", 3),
                str(claim),
                neighbours,
            )
            assert decisions[row, i] == expected.match
            checked.add(expected.match)
    assert checked == {True, False}  # both outcomes occur, so the comparison means something
