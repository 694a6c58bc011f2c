"""Scoring against a gallery, on small vectors whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from facematch.decision.gallery_scoring import (
    Neighbour,
    VerifyRule,
    centroid,
    face_distances,
    identify,
    knn_match,
    rank_subjects,
    verify,
)


def at_angle(degrees: float, dims: int = 4) -> np.ndarray:
    """A unit vector in the first two dimensions at ``degrees`` from the first axis, so its
    cosine distance to ``at_angle(0)`` is ``1 - cos(degrees)``."""
    v = np.zeros(dims)
    v[0], v[1] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return v


def cos_d(degrees: float) -> float:
    return 1.0 - np.cos(np.radians(degrees))


SAMPLE = at_angle(0)


def test_face_distances_are_cosine_distances_whatever_the_norms():
    faces = np.stack([3 * at_angle(0), 0.5 * at_angle(90), at_angle(180)])
    np.testing.assert_allclose(face_distances(7 * SAMPLE, faces), [0.0, 1.0, 2.0], atol=1e-12)


def test_face_distances_refuse_a_zero_vector_and_mismatched_dimensions():
    with pytest.raises(ValueError, match="norm zero"):
        face_distances(SAMPLE, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="dimensions"):
        face_distances(SAMPLE, np.ones((1, 3)))


def test_centroid_is_the_normalised_mean_of_the_unit_references():
    # Unequal norms must not pull the centroid: both references count once.
    c = centroid(np.stack([10 * at_angle(20), at_angle(-20)]))
    np.testing.assert_allclose(c, at_angle(0), atol=1e-12)
    with pytest.raises(ValueError, match="cancel out"):
        centroid(np.stack([at_angle(0), at_angle(180)]))


def test_nearest_rule_lets_the_closest_reference_decide():
    refs = np.stack([at_angle(80), at_angle(30), at_angle(120)])
    result = verify(SAMPLE, refs, threshold=cos_d(35), rule=VerifyRule("nearest"))
    assert result.match and result.references == 3 and result.rule == "nearest"
    assert result.distance == pytest.approx(cos_d(30))
    assert not verify(SAMPLE, refs, threshold=cos_d(25), rule=VerifyRule("nearest")).match


def test_centroid_rule_uses_the_distance_to_the_mean_direction_not_to_any_reference():
    # References at +-40 degrees: each is 40 degrees away, their centroid is the sample itself.
    refs = np.stack([at_angle(40), at_angle(-40)])
    threshold = cos_d(20)
    assert not verify(SAMPLE, refs, threshold, VerifyRule("nearest")).match
    result = verify(SAMPLE, refs, threshold, VerifyRule("centroid"))
    assert result.match and result.distance == pytest.approx(0.0, abs=1e-12)


def test_knn_rule_accepts_when_at_least_half_of_the_voters_are_the_subject():
    refs = np.stack([at_angle(10), at_angle(20)])
    near = [Neighbour("ann", cos_d(10)), Neighbour("bob", cos_d(15)), Neighbour("ann", cos_d(20))]
    result = verify(SAMPLE, refs, cos_d(30), VerifyRule("knn", k=3), "ann", near)
    assert (result.match, result.votes, result.voters) == (True, 2, 3)
    assert result.distance == pytest.approx(cos_d(10))
    # The same neighbours claimed as bob: 1 vote of 3 voters.
    result = verify(SAMPLE, refs, cos_d(30), VerifyRule("knn", k=3), "bob", near)
    assert (result.match, result.votes, result.voters) == (False, 1, 3)


def test_knn_rule_only_counts_neighbours_within_the_threshold():
    refs = np.stack([at_angle(10)])
    near = [Neighbour("ann", cos_d(10)), Neighbour("bob", cos_d(12)), Neighbour("bob", cos_d(40))]
    tie = verify(SAMPLE, refs, cos_d(30), VerifyRule("knn", k=3), "ann", near)
    assert (tie.match, tie.votes, tie.voters) == (True, 1, 2)  # a tie goes to the subject
    lost = verify(SAMPLE, refs, cos_d(45), VerifyRule("knn", k=3), "ann", near)
    assert (lost.match, lost.votes, lost.voters) == (False, 1, 3)
    nobody = verify(SAMPLE, refs, cos_d(5), VerifyRule("knn", k=3), "ann", near)
    assert (nobody.match, nobody.votes, nobody.voters) == (False, 0, 0)


def test_knn_rule_only_counts_the_k_nearest_neighbours_given_in_any_order():
    refs = np.stack([at_angle(10), at_angle(14)])
    near = [
        Neighbour("bob", cos_d(18)),
        Neighbour("ann", cos_d(10)),
        Neighbour("bob", cos_d(16)),
        Neighbour("bob", cos_d(12)),
        Neighbour("ann", cos_d(14)),
    ]
    three = verify(SAMPLE, refs, cos_d(30), VerifyRule("knn", k=3), "ann", near)
    assert (three.match, three.votes, three.voters) == (True, 2, 3)
    five = verify(SAMPLE, refs, cos_d(30), VerifyRule("knn", k=5), "ann", near)
    assert (five.match, five.votes, five.voters) == (False, 2, 5)


def test_knn_match_broadcasts_over_trials_and_thresholds():
    d = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    mine = np.array([[True, False, False], [False, True, True]])
    thresholds = np.array([[0.05, 0.15, 0.25, 0.35]]).T  # (4, 1) against 2 trials
    match, votes, voters = knn_match(d[None], mine[None], thresholds)
    assert match.shape == (4, 2)
    np.testing.assert_array_equal(voters, [[0, 0], [1, 1], [2, 2], [3, 3]])
    np.testing.assert_array_equal(votes, [[0, 0], [1, 0], [1, 1], [1, 2]])
    np.testing.assert_array_equal(
        match, [[False, False], [True, False], [True, True], [False, True]]
    )


def test_knn_rule_needs_the_subject_and_its_neighbours():
    with pytest.raises(ValueError, match="knn"):
        verify(SAMPLE, np.stack([SAMPLE]), 0.5, VerifyRule("knn"))


def test_verify_rule_and_references_are_validated():
    with pytest.raises(ValueError, match="unknown rule"):
        VerifyRule("mean")
    with pytest.raises(ValueError, match="k must be"):
        VerifyRule("knn", k=0)
    with pytest.raises(ValueError, match="without references"):
        verify(SAMPLE, np.zeros((0, 4)), 0.5)


def test_subjects_are_ranked_by_their_nearest_face():
    subjects = ["ann", "bob", "ann", "cid", "bob"]
    distances = np.array([0.9, 0.4, 0.2, 0.3, 0.8])
    assert rank_subjects(distances, subjects, top_k=2) == [("ann", 0.2), ("cid", 0.3)]
    assert [s for s, _ in rank_subjects(distances, subjects, top_k=10)] == ["ann", "cid", "bob"]


def test_equal_distances_rank_by_subject_id():
    assert rank_subjects(np.array([0.5, 0.5, 0.5]), ["c", "a", "b"], 3) == [
        ("a", 0.5),
        ("b", 0.5),
        ("c", 0.5),
    ]


def test_identify_names_the_best_subject_only_when_it_is_within_the_threshold():
    subjects = ["ann", "bob", "cid"]
    distances = np.array([0.5, 0.3, 0.7])
    found = identify(distances, subjects, threshold=0.4, top_k=2)
    assert found.identified == "bob"
    assert [(c.subject, c.match) for c in found.candidates] == [("bob", True), ("ann", False)]
    unknown = identify(distances, subjects, threshold=0.2, top_k=5)
    assert unknown.identified is None
    assert [c.subject for c in unknown.candidates] == ["bob", "ann", "cid"]
    assert not any(c.match for c in unknown.candidates)


def test_identify_on_an_empty_gallery_has_no_candidates():
    found = identify(np.zeros(0), [], threshold=0.5)
    assert found.identified is None and found.candidates == ()


def test_top_k_and_the_distance_count_are_validated():
    with pytest.raises(ValueError, match="top_k"):
        rank_subjects(np.array([0.1]), ["a"], top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        rank_subjects(np.array([0.1]), ["a"], top_k=101)
    with pytest.raises(ValueError, match="2 distances for 1 subjects"):
        rank_subjects(np.array([0.1, 0.2]), ["a"], top_k=1)
