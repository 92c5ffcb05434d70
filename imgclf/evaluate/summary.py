"""Assemble every number of an evaluation into one JSON-ready dict (numpy only, no torch).

The report module formats this dict; metrics.json is this dict plus the run's context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imgclf.evaluate import metrics

MOST_CONFUSED = 10


def _baselines(
    classes: Sequence[str],
    y_true: np.ndarray,
    train_counts: Mapping[str, int],
    *,
    draws: int,
    seed: int,
) -> dict[str, Any]:
    train_p = metrics.class_frequencies(train_counts, classes)
    test_counts = np.bincount(y_true, minlength=len(classes))
    majority = metrics.majority_baseline(train_p, test_counts)
    return {
        "train_frequencies": dict(zip(classes, train_p.round(6).tolist(), strict=True)),
        "random": {
            "description": "guess class k with its training frequency p_k, independently per item",
            # A score independent of the truth ranks a positive above a negative half the time.
            "exact": {
                **metrics.expected_random_baseline(train_p, test_counts),
                "roc_auc_macro": 0.5,
            },
            "simulation": {
                "draws": draws,
                "seed": seed,
                **metrics.simulate_random_baseline(train_p, y_true, draws=draws, seed=seed),
            },
        },
        "majority": {
            "description": "always answer the most frequent training class",
            "class": classes[majority.pop("class_index")],
            **majority,
        },
    }


def summarize_evaluation(
    classes: Sequence[str],
    y_true: Sequence[int],
    probabilities: np.ndarray,
    train_counts: Mapping[str, int] | None,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Headline metrics with bootstrap CIs, baselines, per-class table, confusions, matrix.

    train_counts: {class: n} of the training split, for the baselines (None: no baselines).
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=float)
    cm = metrics.confusion_matrix(y_true, probabilities.argmax(axis=1), len(classes))
    scores = metrics.per_class_scores(cm)
    support = scores["support"]
    return {
        "items": len(y_true),
        "classes": list(classes),
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": metrics.CONFIDENCE},
        "metrics": metrics.headline_metrics(y_true, probabilities, resamples=resamples, seed=seed),
        "baselines": (
            _baselines(classes, y_true, train_counts, draws=resamples, seed=seed)
            if train_counts and sum(train_counts.values()) > 0
            else None
        ),
        "per_class": [
            {
                "class": name,
                "precision": float(scores["precision"][k]),
                "recall": float(scores["recall"][k]),
                "f1": float(scores["f1"][k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(classes)
        ],
        "most_confused": [
            {
                "true": classes[t],
                "predicted": classes[p],
                "count": count,
                "share_of_true": count / int(support[t]),
            }
            for t, p, count in metrics.most_confused_pairs(cm, MOST_CONFUSED)
        ],
        "confusion_matrix": cm.tolist(),
    }
