"""The paired View 1 comparison: its pairs, its rates and its bootstrap, then a smoke run."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarking_utils.view1_pairs import PairSet, bootstrap, build_pairs, rates

NAMES = [
    f"{p}/{p}_{i:04d}.jpg"
    for p, n in (("A", 4), ("B", 2), ("C", 1), ("D", 3))
    for i in range(1, n + 1)
]


def test_pairs_hold_every_same_person_pair_up_to_the_cap_and_distinct_strangers():
    pairs = build_pairs(NAMES, max_per_person=2, different=12, seed=3)
    same = list(zip(pairs.first[pairs.same], pairs.second[pairs.same], strict=True))
    # A has 6 pairs (capped to 2), B 1, C none, D 3 (capped to 2).
    assert len(same) == 5
    assert all(pairs.person_a[i] == pairs.person_b[i] for i in np.flatnonzero(pairs.same))
    different = {
        (int(a), int(b))
        for a, b in zip(pairs.first[~pairs.same], pairs.second[~pairs.same], strict=True)
    }
    assert len(different) == 12 == int((~pairs.same).sum())
    assert all(pairs.person_a[i] != pairs.person_b[i] for i in np.flatnonzero(~pairs.same))


def test_rates_are_the_best_balanced_accuracy_and_the_equal_error_rate():
    d = np.array([0.1, 0.2, 0.5, 0.3, 0.6, 0.9])
    same = np.array([True, True, True, False, False, False])
    # Best threshold between 0.2 and 0.3: TAR 2/3, FAR 0 -> 5/6; at 0.5: TAR 1, FAR 1/3 -> 5/6.
    balanced, eer = rates(d, same, np.ones(6))
    assert balanced == pytest.approx(5 / 6)
    assert eer == pytest.approx(1 / 3)
    # Weighting the one misplaced different pair to zero separates the classes.
    assert rates(d, same, np.array([1, 1, 1, 0, 1, 1.0])) == pytest.approx((1.0, 0.0))


def test_the_bootstrap_resamples_the_same_people_for_every_configuration():
    pairs = build_pairs(NAMES, max_per_person=10, different=12)
    d = np.where(pairs.same, 0.2, 0.8) + np.linspace(0, 0.01, len(pairs.same))
    samples = bootstrap({"a": d, "b": d.copy()}, pairs, resamples=20)
    assert samples["a"].shape == (20, 2)
    np.testing.assert_array_equal(samples["a"], samples["b"])
    drawn = samples["a"][~np.isnan(samples["a"][:, 0])]  # nan: a resample drew no same pair
    assert isinstance(pairs, PairSet) and len(drawn) > 10 and np.all(drawn == [1.0, 0.0])


@pytest.mark.slow
def test_the_command_compares_configurations_on_view1_images(run_benchmark, tmp_path):
    report = run_benchmark(
        "view1_pairs",
        tmp_path / "pairs.json",
        *("--limit", "40", "--different", "300", "--resamples", "20"),
        *("--config", "plain:flip_embeddings=false", "--config", "flip:flip_embeddings=true"),
    )
    assert report["pairs"]["different"] == 300 and report["pairs"]["same"] > 0
    plain, flip = report["configs"]["plain"], report["configs"]["flip"]
    assert report["settings"]["flip"]["flip_embeddings"] is True
    assert 0.5 < plain["balanced_accuracy"] <= 1 and 0 <= flip["eer"] < 0.5
    assert plain["minus_plain"]["balanced_accuracy"] == 0
    assert flip["minus_plain"]["balanced_accuracy"] == pytest.approx(
        flip["balanced_accuracy"] - plain["balanced_accuracy"], abs=2e-5
    )
