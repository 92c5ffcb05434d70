"""Metric functions against numbers computed by hand, against scikit-learn, and the random
baseline's exact formulas against brute-force enumeration and a large seeded simulation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn import metrics as sk

from imgclf.evaluate import metrics

# Three classes; class 2 is never predicted.
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 0, 0, 1, 1]


def test_confusion_matrix_and_scores_by_hand():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [1, 2, 0]]
    scores = metrics.per_class_scores(cm)
    assert scores["precision"] == pytest.approx([2 / 4, 1 / 4, 0])
    assert scores["recall"] == pytest.approx([2 / 3, 1 / 2, 0])
    assert scores["f1"] == pytest.approx([4 / 7, 2 / 6, 0])
    assert scores["support"].tolist() == [3, 2, 3]
    assert metrics.macro_f1(cm) == pytest.approx(19 / 63)
    assert metrics.accuracy(cm) == pytest.approx(3 / 8)
    assert metrics.balanced_accuracy(cm) == pytest.approx(7 / 18)


def test_class_absent_from_predictions_matches_sklearn():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert metrics.macro_f1(cm) == pytest.approx(
        sk.f1_score(Y_TRUE, Y_PRED, average="macro", zero_division=0)
    )
    assert metrics.balanced_accuracy(cm) == pytest.approx(
        sk.balanced_accuracy_score(Y_TRUE, Y_PRED)
    )
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        Y_TRUE, Y_PRED, labels=[0, 1, 2], zero_division=0
    )
    scores = metrics.per_class_scores(cm)
    for name, expected in zip(
        ("precision", "recall", "f1", "support"), (precision, recall, f1, support), strict=True
    ):
        assert scores[name] == pytest.approx(expected)


def test_class_absent_from_the_test_set_is_left_out_of_macro_averages():
    # Class 2 has no test image but is predicted once: it lowers class 0's recall only.
    y_true, y_pred = [0, 0, 1, 1], [0, 2, 1, 1]
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    assert metrics.macro_f1(cm) == pytest.approx((2 / 3 + 1) / 2)
    assert metrics.macro_f1(cm) == pytest.approx(
        sk.f1_score(y_true, y_pred, labels=[0, 1], average="macro")
    )
    assert metrics.balanced_accuracy(cm) == pytest.approx((1 / 2 + 1) / 2)


def test_top_k_hits_by_hand():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert metrics.top_k_hits(np.array([1, 0, 2]), probabilities, 1).tolist() == [
        False,
        False,
        False,
    ]
    assert metrics.top_k_hits(np.array([1, 0, 2]), probabilities, 2).tolist() == [
        True,
        False,
        False,
    ]


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([0.1, 0.4, 0.35, 0.8], 3 / 4), ([0.1, 0.4, 0.4, 0.8], 3.5 / 4)],  # ties count one half
)
def test_roc_auc_by_hand(scores, expected):
    p1 = np.array(scores)
    probabilities = np.stack([1 - p1, p1], axis=1)
    auc = metrics.macro_roc_auc(np.array([0, 0, 1, 1]), probabilities, np.ones((1, 4)))
    assert auc[0] == pytest.approx(expected)


def test_roc_auc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    probabilities = rng.dirichlet(np.ones(4), 200).round(1)  # rounding makes many ties
    weights = rng.integers(0, 3, (2, 200))
    for row in weights:
        expected = np.mean(
            [sk.roc_auc_score(y == k, probabilities[:, k], sample_weight=row) for k in range(4)]
        )
        assert metrics.macro_roc_auc(y, probabilities, row[None])[0] == pytest.approx(expected)


def test_bootstrap_weights_equal_an_explicit_resample():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 5, 60)
    probabilities = rng.dirichlet(np.ones(5), 60)
    y_pred = probabilities.argmax(axis=1)
    counts = metrics.bootstrap_weights(60, 1, rng)[0]
    drawn = np.repeat(np.arange(60), counts)
    cm = metrics.confusion_matrices(y, y_pred, 5, counts[None])
    present = np.unique(y[drawn])
    assert metrics.macro_f1(cm)[0] == pytest.approx(
        sk.f1_score(y[drawn], y_pred[drawn], labels=present, average="macro", zero_division=0)
    )
    assert metrics.accuracy(cm)[0] == pytest.approx(sk.accuracy_score(y[drawn], y_pred[drawn]))


def test_headline_metrics_values_cis_and_seed():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 150)
    logits = rng.normal(size=(150, 8))
    logits[np.arange(150), y] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = metrics.headline_metrics(y, probabilities, resamples=300, seed=1)
    assert list(result) == [
        "f1_macro",
        "accuracy",
        "balanced_accuracy",
        "top5_accuracy",
        "roc_auc_macro",
    ]
    y_pred = probabilities.argmax(axis=1)
    assert result["f1_macro"]["value"] == pytest.approx(sk.f1_score(y, y_pred, average="macro"))
    assert result["top5_accuracy"]["value"] == pytest.approx(
        sk.top_k_accuracy_score(y, probabilities, k=5)
    )
    assert result["roc_auc_macro"]["value"] == pytest.approx(
        sk.roc_auc_score(y, probabilities, multi_class="ovr")
    )
    for value in result.values():
        assert value["ci_low"] < value["value"] < value["ci_high"]
    assert metrics.headline_metrics(y, probabilities, resamples=300, seed=1) == result
    assert metrics.headline_metrics(y, probabilities, resamples=300, seed=2) != result
    # No top-5 accuracy with 5 classes or fewer: it would be 1 by construction.
    assert "top5_accuracy" not in metrics.headline_metrics(y % 5, probabilities[:, :5], seed=0)


def _brute_force_expectation(p: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """Exact expectations by enumerating every possible vector of guesses."""
    totals = {"accuracy": 0.0, "balanced_accuracy": 0.0, "f1_macro": 0.0}
    for guesses in itertools.product(range(len(p)), repeat=len(y_true)):
        chance = float(np.prod(p[list(guesses)]))
        cm = metrics.confusion_matrix(y_true, guesses, len(p))
        totals["accuracy"] += chance * metrics.accuracy(cm)
        totals["balanced_accuracy"] += chance * metrics.balanced_accuracy(cm)
        totals["f1_macro"] += chance * metrics.macro_f1(cm)
    return totals


def test_random_baseline_formula_equals_brute_force_enumeration():
    # Class 3 is guessed sometimes but has no test item.
    p = np.array([0.4, 0.2, 0.3, 0.1])
    y_true = np.array([0, 0, 1, 2, 2])
    exact = metrics.expected_random_baseline(p, np.bincount(y_true, minlength=4))
    brute = _brute_force_expectation(p, y_true)
    for name, value in brute.items():
        assert exact[name] == pytest.approx(value, abs=1e-12)
    assert exact["accuracy"] == pytest.approx((0.4 * 2 + 0.2 * 1 + 0.3 * 2) / 5)


def test_random_baseline_formula_against_a_large_seeded_simulation():
    rng = np.random.default_rng(11)
    train_p = rng.dirichlet(np.full(10, 2.0))
    y_true = rng.choice(10, size=310, p=rng.dirichlet(np.full(10, 2.0)))
    exact = metrics.expected_random_baseline(train_p, np.bincount(y_true, minlength=10))
    draws = 20_000
    simulated = metrics.simulate_random_baseline(train_p, y_true, draws=draws, seed=5)
    for name in ("accuracy", "balanced_accuracy", "f1_macro"):
        spread = simulated[name]["ci_high"] - simulated[name]["ci_low"]  # about 3.9 sd
        standard_error = spread / 3.92 / np.sqrt(draws)
        assert abs(simulated[name]["mean"] - exact[name]) < 4 * standard_error
    assert simulated == metrics.simulate_random_baseline(train_p, y_true, draws=draws, seed=5)


def test_majority_baseline_by_hand():
    # Training favours class 1; test counts [3, 2, 3].
    result = metrics.majority_baseline(np.array([0.2, 0.5, 0.3]), np.array([3, 2, 3]))
    assert result["class_index"] == 1
    assert result["accuracy"] == pytest.approx(2 / 8)
    assert result["f1_macro"] == pytest.approx((2 * 2 / (2 + 8)) / 3)
    assert result["balanced_accuracy"] == pytest.approx(1 / 3)


def test_most_confused_pairs_by_hand():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert metrics.most_confused_pairs(cm, top=2) == [(2, 1, 2), (0, 1, 1)]
    assert metrics.most_confused_pairs(np.eye(3, dtype=int)) == []


def test_class_frequencies_follow_class_order():
    p = metrics.class_frequencies({"b": 3, "a": 1}, ["a", "b", "c"])
    assert p.tolist() == [0.25, 0.75, 0.0]
