"""Accuracy of the default pipeline on LFW View 1 DevTest, with the DevTrain-chosen threshold."""

from __future__ import annotations

import pytest

from deployment_utils.lfw import (
    accuracy_counting_failures,
    engine_embedder,
    pair_distances,
    read_pairs,
)
from facematch.decision import scores as score_service


@pytest.mark.slow
def test_devtest_accuracy_is_at_least_97_percent(engine, lfw, settings):
    pairs = read_pairs(lfw / "pairsDevTest.txt")
    assert len(pairs) == 1000
    distances, same, _ = pair_distances(engine_embedder(engine), lfw, pairs, settings.metric)
    threshold = score_service.default_threshold(settings.metric)
    accuracy = accuracy_counting_failures(distances, same, threshold)
    print(f"DevTest accuracy {accuracy:.4f} at threshold {threshold}")
    assert accuracy >= 0.970
