"""Retrieval metrics against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.search.metrics import (
    average_precision_at_r,
    bootstrap_mean,
    class_prototypes,
    knn_vote,
    nearest_prototype,
    recall_hits,
)

# Three queries of classes 0, 1, 0; their neighbours' classes, best first.
QUERY = np.array([0, 1, 0])
RANKED = np.array(
    [
        [1, 0, 0, 2, 1],  # first own-class hit at rank 2
        [1, 1, 0, 1, 1],  # hit at rank 1
        [2, 2, 1, 1, 2],  # no hit in 5
    ]
)


def test_recall_at_k_is_the_share_of_queries_with_a_hit():
    assert recall_hits(QUERY, RANKED, 1).tolist() == [0, 1, 0]
    assert recall_hits(QUERY, RANKED, 2).tolist() == [1, 1, 0]
    assert recall_hits(QUERY, RANKED, 5).mean() == pytest.approx(2 / 3)


def test_map_at_r_by_hand():
    sizes = np.array([3, 2, 7])  # gallery items per class: R is 3 for class 0, 2 for class 1
    ap = average_precision_at_r(QUERY, RANKED, sizes)
    # query 0, R=3, top 3 = [1,0,0]: hits at ranks 2,3 -> (1/2 + 2/3) / 3
    # query 1, R=2, top 2 = [1,1]: (1 + 1) / 2 = 1
    # query 2, R=3, top 3 = [2,2,1]: 0
    assert ap.tolist() == pytest.approx([(1 / 2 + 2 / 3) / 3, 1.0, 0.0])


def test_map_at_r_needs_r_neighbours_and_scores_an_absent_class_zero():
    with pytest.raises(ValueError, match="needs 7"):
        average_precision_at_r(np.array([2]), RANKED[:1], np.array([3, 2, 7]))
    assert average_precision_at_r(np.array([1]), RANKED[:1], np.array([3, 0])).tolist() == [0]


def test_knn_vote_majority_and_tie_to_the_best_ranked_class():
    votes = knn_vote(np.array([[1, 0, 0, 2, 1], [2, 1, 1, 2, -1], [3, -1, -1, -1, -1]]), 5)
    # row 0: 1 twice, 0 twice -> 1 ranks first; row 1: 2 and 1 twice each -> 2; row 2: only 3
    assert votes.tolist() == [1, 2, 3]
    assert knn_vote(np.array([[1, 0, 0, 2, 1]]), 3).tolist() == [0]


def test_prototypes_are_renormalised_means_and_the_nearest_wins():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-0.6, 0.8]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    protos = class_prototypes(embeddings, labels, 3)
    s = 1 / np.sqrt(2)
    # class 0: mean (0.5, 0.5) -> (s, s); class 1: mean (-0.8, 0.4) -> (-2, 1)/sqrt(5);
    # class 2 has no items: a zero row
    np.testing.assert_allclose(
        protos, [[s, s], [-2 / np.sqrt(5), 1 / np.sqrt(5)], [0, 0]], atol=1e-6
    )
    best, score = nearest_prototype(np.array([[0.0, 1.0], [-1.0, 0.0]], dtype=np.float32), protos)
    assert best.tolist() == [0, 1]
    np.testing.assert_allclose(score, [s, 2 / np.sqrt(5)], atol=1e-6)


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = np.array([1.0, 0.0, 1.0, 1.0])
    first = bootstrap_mean(values, resamples=500, seed=3)
    assert first["value"] == 0.75
    assert 0.0 <= first["ci_low"] <= 0.75 <= first["ci_high"] <= 1.0
    assert bootstrap_mean(values, resamples=500, seed=3) == first
    assert bootstrap_mean(np.ones(5))["ci_low"] == 1.0
