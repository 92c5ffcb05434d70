"""Retrieval metrics over ranked neighbour labels (pure numpy), with bootstrap intervals.

Inputs are class indices: `query_labels` (Q,), and `neighbour_labels` (Q, k) of each query's
gallery neighbours in rank order (best first), -1 where fewer than k were found.

- recall@k (the metric-learning sense, as in Musgrave et al. 2020, "A Metric Learning Reality
  Check"): the share of queries with at least one neighbour of their own class in the top k;
- MAP@R (same paper): per query, R = the number of gallery items of its class;
  AP@R = (1/R) * sum over ranks i <= R of precision@i at the ranks that are of its class;
  a query whose class has no gallery item scores 0;
- kNN vote: the class most frequent among the k nearest neighbours; a tie between classes goes
  to the one whose best neighbour ranks highest;
- nearest prototype: the class whose prototype (mean embedding, re-normalised) has the highest
  cosine with the query; ties go to the lower class index (numpy's argmax).
Every metric is a mean of per-query values, so its bootstrap resamples the queries.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def recall_hits(query_labels: np.ndarray, neighbour_labels: np.ndarray, k: int) -> np.ndarray:
    """Per query 1.0 when one of its first k neighbours has its class, else 0.0."""
    same = neighbour_labels[:, :k] == query_labels[:, None]
    return same.any(axis=1).astype(float)


def average_precision_at_r(
    query_labels: np.ndarray, neighbour_labels: np.ndarray, class_sizes: np.ndarray
) -> np.ndarray:
    """Per query AP@R, R = class_sizes[label] (gallery items of its class); needs >= R columns."""
    values = np.zeros(len(query_labels))
    for q, (label, ranked) in enumerate(zip(query_labels, neighbour_labels, strict=True)):
        r = int(class_sizes[label]) if 0 <= label < len(class_sizes) else 0
        if r == 0:
            continue
        if ranked.shape[0] < r:
            raise ValueError(f"MAP@R needs {r} neighbours per query, got {ranked.shape[0]}")
        relevant = ranked[:r] == label
        precision = np.cumsum(relevant) / np.arange(1, r + 1)
        values[q] = float(np.sum(precision * relevant) / r)
    return values


def knn_vote(neighbour_labels: np.ndarray, k: int) -> np.ndarray:
    """Per query the majority class of its first k neighbours (ties: best-ranked class)."""
    votes = np.full(len(neighbour_labels), -1)
    for q, ranked in enumerate(neighbour_labels[:, :k]):
        ranked = ranked[ranked >= 0]
        if len(ranked) == 0:
            continue
        classes, first, counts = np.unique(ranked, return_index=True, return_counts=True)
        best = counts == counts.max()
        votes[q] = classes[best][np.argmin(first[best])]
    return votes


def nearest_prototype(
    queries: np.ndarray, prototypes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query the index of the prototype with the highest cosine, and that cosine."""
    scores = queries @ prototypes.T
    best = np.argmax(scores, axis=1)
    return best, scores[np.arange(len(queries)), best]


def class_prototypes(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, D) mean embedding of each class, re-normalised (zero rows for no items)."""
    sums = np.zeros((num_classes, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, embeddings.astype(np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def bootstrap_mean(
    values: np.ndarray, *, resamples: int = 1000, seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, float]:
    """{"value", "ci_low", "ci_high"}: the mean of per-query `values` and its percentile
    interval over `resamples` seeded resamples of the queries (with replacement)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"value": float(values.mean()), "ci_low": float(low), "ci_high": float(high)}
