"""Classification metrics, bootstrap confidence intervals and chance baselines (numpy/scipy only).

Every metric is computed from per-item *weights*: the point estimate gives each test item weight 1,
a bootstrap resample gives it the number of times it was drawn (a multinomial count). One code path
therefore serves the point estimate and thousands of resamples at once, vectorised over a leading
batch axis, instead of a second, "fast" implementation for the bootstrap.

Conventions (the same for the model and the baselines, so they compare):
- labels are class indices 0..K-1; confusion matrices have true classes in rows;
- macro averages run over the classes *present in the evaluated set* (support > 0), like sklearn's
  `f1_score(labels=present, average="macro")` and `balanced_accuracy_score`. A class the model
  never predicts has precision 0 (sklearn's zero_division=0) and F1 0;
- F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k) = 2 TP_k / (n_k + M_k), with n_k the support of class k
  and M_k the number of items predicted as k.

The implementation is vectorised numpy because a bootstrap needs thousands of evaluations; the
tests check every function against scikit-learn and against numbers computed by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import binom

CONFIDENCE = 0.95
# Largest (resamples x items) block of weights held in memory at once during the bootstrap.
_BLOCK_CELLS = 4_000_000


def confusion_matrices(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Confusion matrices (B, K, K), rows = true class, one per row of `y_pred` / `weights`.

    y_true: (n,); y_pred: (n,) or (B, n); weights: per-item weights (B, n), or None for 1 each.
    """
    y_pred = np.atleast_2d(y_pred)
    if weights is not None:
        y_pred = np.broadcast_to(y_pred, np.shape(weights))
        weights = np.asarray(weights, dtype=float).ravel()
    batch = len(y_pred)
    cells = np.asarray(y_true)[None, :] * num_classes + y_pred
    # Offset each row into its own block of K*K bins: one bincount builds all B matrices.
    cells = cells + np.arange(batch)[:, None] * num_classes * num_classes
    counts = np.bincount(cells.ravel(), weights=weights, minlength=batch * num_classes**2)
    return counts.reshape(batch, num_classes, num_classes)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Integer confusion matrix (K, K), rows = true class, columns = predicted class."""
    return confusion_matrices(np.asarray(y_true), np.asarray(y_pred), num_classes)[0].astype(int)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0 where the denominator is 0 (sklearn's zero_division=0)."""
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from confusion matrices (..., K, K)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    return {
        "precision": _divide(tp, predicted),
        "recall": _divide(tp, support),
        "f1": _divide(2 * tp, support + predicted),
        "support": support,
    }


def _macro(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Mean of `values` over the classes with support > 0 (last axis)."""
    present = support > 0
    return _divide((values * present).sum(axis=-1), present.sum(axis=-1))


def accuracy(cm: np.ndarray) -> np.ndarray:
    """Share of correct predictions, from confusion matrices (..., K, K)."""
    return _divide(np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1)))


def macro_f1(cm: np.ndarray) -> np.ndarray:
    """Unweighted mean F1 over the classes present, from confusion matrices (..., K, K)."""
    scores = per_class_scores(cm)
    return _macro(scores["f1"], scores["support"])


def balanced_accuracy(cm: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present, from confusion matrices (..., K, K)."""
    scores = per_class_scores(cm)
    return _macro(scores["recall"], scores["support"])


def top_k_hits(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> np.ndarray:
    """Boolean per item: is the true class among the k most probable ones?"""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return (top == np.asarray(y_true)[:, None]).any(axis=1)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of per-item `values` (n,) under each row of `weights` (B, n)."""
    return _divide(weights @ values.astype(float), weights.sum(axis=1))


def macro_roc_auc(
    y_true: np.ndarray, probabilities: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """One-vs-rest ROC-AUC averaged over classes, for each row of `weights` (B, n) → (B,).

    AUC_k is the Mann-Whitney statistic: the chance that a random item of class k scores higher
    on p_k than a random item of another class, ties counting one half; with per-item weights
    every pair counts w_i * w_j. Classes with no positive or no negative item (under a given
    weighting) are left out of that row's average; a row with none is NaN.
    """
    y_true = np.asarray(y_true)
    weights = np.asarray(weights, dtype=float)
    num_classes = probabilities.shape[1]
    sums = np.zeros(len(weights))
    valid = np.zeros(len(weights))
    for k in range(num_classes):
        order = np.argsort(probabilities[:, k], kind="stable")
        scores = probabilities[order, k]
        positive = y_true[order] == k
        w = weights[:, order]
        neg_w = w * ~positive
        # Tied scores form groups; an item beats the negatives of all lower groups and ties
        # with the negatives of its own group.
        new_group = np.concatenate([[True], scores[1:] != scores[:-1]])
        starts, group = np.flatnonzero(new_group), np.cumsum(new_group) - 1
        group_neg = np.add.reduceat(neg_w, starts, axis=1)
        below = np.cumsum(group_neg, axis=1) - group_neg
        pos_w = w * positive
        u = (pos_w * (below[:, group] + 0.5 * group_neg[:, group])).sum(axis=1)
        pairs = pos_w.sum(axis=1) * neg_w.sum(axis=1)
        ok = pairs > 0
        sums += _divide(u, pairs) * ok
        valid += ok
    return np.where(valid > 0, _divide(sums, valid), np.nan)


def _metric_rows(
    y_true: np.ndarray, probabilities: np.ndarray, weights: np.ndarray, top_k: int | None
) -> dict[str, np.ndarray]:
    """Every headline metric for each row of `weights` (B, n)."""
    num_classes = probabilities.shape[1]
    y_pred = probabilities.argmax(axis=1)
    cm = confusion_matrices(y_true, y_pred, num_classes, weights)
    rows = {
        "f1_macro": macro_f1(cm),
        "accuracy": accuracy(cm),
        "balanced_accuracy": balanced_accuracy(cm),
    }
    if top_k:
        rows[f"top{top_k}_accuracy"] = weighted_mean(
            top_k_hits(y_true, probabilities, top_k), weights
        )
    rows["roc_auc_macro"] = macro_roc_auc(y_true, probabilities, weights)
    return rows


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) counts: how often each item is drawn in each bootstrap resample."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)


def headline_metrics(
    y_true: Sequence[int],
    probabilities: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, float]]:
    """Macro-F1, accuracy, balanced accuracy, top-5 (K > 5) and macro ROC-AUC with bootstrap CIs.

    Returns {metric: {"value", "ci_low", "ci_high"}}; the interval is the percentile interval of
    `resamples` seeded bootstrap resamples of the items (NaN-free resamples only).
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=float)
    n, num_classes = probabilities.shape
    top_k = 5 if num_classes > 5 else None
    point = _metric_rows(y_true, probabilities, np.ones((1, n)), top_k)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    chunks: list[dict[str, np.ndarray]] = []
    for start in range(0, resamples, block):
        weights = bootstrap_weights(n, min(block, resamples - start), rng)
        chunks.append(_metric_rows(y_true, probabilities, weights, top_k))
    tail = (1 - confidence) / 2 * 100
    result = {}
    for name, value in point.items():
        samples = np.concatenate([chunk[name] for chunk in chunks]) if chunks else np.array([])
        samples = samples[~np.isnan(samples)]
        low, high = np.percentile(samples, [tail, 100 - tail]) if len(samples) else (np.nan,) * 2
        result[name] = {"value": float(value[0]), "ci_low": float(low), "ci_high": float(high)}
    return result


def class_frequencies(counts: Mapping[str, int], classes: Sequence[str]) -> np.ndarray:
    """Frequencies p_k of `classes` in a {class: count} mapping (absent classes count 0)."""
    raw = np.array([counts.get(name, 0) for name in classes], dtype=float)
    if raw.sum() <= 0:
        raise ValueError("class counts are empty")
    return raw / raw.sum()


def expected_random_baseline(train_p: np.ndarray, test_counts: np.ndarray) -> dict[str, float]:
    """Exact expected scores of a guesser that draws class k with probability p_k, per item.

    With n test items, n_k of them of class k (q_k = n_k / n), S the classes present (n_k > 0)
    and M_k ~ Binomial(n, p_k) the number of items guessed as k:
    - accuracy: E[acc] = sum_k p_k q_k (linearity: item i is right with probability p_{y_i});
    - balanced accuracy: E[recall_k] = p_k, so E[bal. acc] = (1/|S|) sum_{k in S} p_k;
    - macro-F1: F1_k = 2 TP_k / (n_k + M_k). Guesses are independent and identically distributed
      over items, so given M_k = m the m items guessed k are a uniform random subset and TP_k is
      hypergeometric with mean m n_k / n. Hence, exactly,
          E[F1_k] = sum_{m=0..n} Binom(m; n, p_k) * 2 m n_k / (n (n_k + m))
      and E[macro-F1] = (1/|S|) sum_{k in S} E[F1_k] by linearity. This is the expectation of the
      metric itself (not the F1 of expected counts, which is larger), so it matches the average
      of a simulation; it costs O(n) per class.
    """
    p = np.asarray(train_p, dtype=float)
    counts = np.asarray(test_counts, dtype=float)
    n = counts.sum()
    present = counts > 0
    m = np.arange(int(n) + 1)
    f1 = np.array(
        [
            (binom.pmf(m, int(n), p[k]) * 2 * m * counts[k] / (n * (counts[k] + m))).sum()
            for k in np.flatnonzero(present)
        ]
    )
    return {
        "accuracy": float((p * counts).sum() / n),
        "balanced_accuracy": float(p[present].mean()),
        "f1_macro": float(f1.mean()),
    }


def simulate_random_baseline(
    train_p: np.ndarray, y_true: Sequence[int], *, draws: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Score `draws` seeded random guessers (class k with probability p_k) on `y_true`.

    Returns {metric: {"mean", "ci_low", "ci_high"}} with the central 95% of the draws.
    """
    y_true = np.asarray(y_true)
    num_classes = len(train_p)
    rng = np.random.default_rng(seed)
    tail = (1 - CONFIDENCE) / 2 * 100
    scores: dict[str, list[np.ndarray]] = {"f1_macro": [], "accuracy": [], "balanced_accuracy": []}
    block = max(1, _BLOCK_CELLS // max(len(y_true), 1))
    for start in range(0, draws, block):
        size = min(block, draws - start)
        guesses = rng.choice(num_classes, size=(size, len(y_true)), p=train_p)
        cm = confusion_matrices(y_true, guesses, num_classes)
        scores["f1_macro"].append(macro_f1(cm))
        scores["accuracy"].append(accuracy(cm))
        scores["balanced_accuracy"].append(balanced_accuracy(cm))
    result = {}
    for name, parts in scores.items():
        values = np.concatenate(parts)
        low, high = np.percentile(values, [tail, 100 - tail])
        result[name] = {"mean": float(values.mean()), "ci_low": float(low), "ci_high": float(high)}
    return result


def majority_baseline(train_p: np.ndarray, test_counts: np.ndarray) -> dict[str, Any]:
    """Scores of always answering the most frequent training class c (exact, no randomness)."""
    counts = np.asarray(test_counts, dtype=float)
    n = counts.sum()
    c = int(np.argmax(train_p))
    present = counts > 0
    f1_c = 2 * counts[c] / (counts[c] + n)
    return {
        "class_index": c,
        "accuracy": float(counts[c] / n),
        "balanced_accuracy": float(present[c] / present.sum()),
        "f1_macro": float(f1_c / present.sum()),
    }


def most_confused_pairs(cm: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
    """The `top` largest off-diagonal cells as (true, predicted, count), largest first."""
    off = np.array(cm, copy=True)
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [(*np.unravel_index(i, off.shape), off.flat[i]) for i in flat]
    return [(int(t), int(p), int(n)) for t, p, n in pairs if n > 0]
