"""Turn an evaluation summary (see summary.py) into text, metrics.json, predictions.csv, pictures.

Formatting only: every number comes from the summary dict; nothing here computes a metric.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from imgclf.imaging import open_rgb

HEADLINE = {
    "f1_macro": "macro-F1",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "top5_accuracy": "top-5 accuracy",
    "roc_auc_macro": "macro ROC-AUC",
}
# Above this many classes the terminal table lists only the weakest ones (all are in the JSON).
FULL_TABLE_CLASSES = 30
WEAKEST_SHOWN = 15
# Cell numbers stay readable up to about this many classes; beyond, the colour alone tells.
ANNOTATE_CLASSES = 25
GALLERY_SIZE = 16


def _fmt(value: float | None) -> str:
    return "   -  " if value is None or math.isnan(value) else f"{value:6.3f}"


def _headline_table(summary: dict[str, Any]) -> list[str]:
    baselines = summary.get("baselines") or {}
    random = baselines.get("random", {}).get("exact", {})
    majority = baselines.get("majority", {})
    ci = round(summary["bootstrap"]["confidence"] * 100)
    lines = [f"{'metric':<18} {'value':>6}   {ci}% CI {'':>9} {'random':>7} {'majority':>8}"]
    for key, label in HEADLINE.items():
        if key not in summary["metrics"]:
            continue
        m = summary["metrics"][key]
        interval = f"[{_fmt(m['ci_low']).strip()}, {_fmt(m['ci_high']).strip()}]"
        row = (
            f"{label:<18} {_fmt(m['value'])}   {interval:<17} "
            f"{_fmt(random.get(key)):>7} {_fmt(majority.get(key)):>8}"
        )
        lines.append(row.rstrip())  # "-" cells are centred: no trailing blanks in logs
    return lines


def _baseline_lines(summary: dict[str, Any]) -> list[str]:
    baselines = summary.get("baselines")
    if not baselines:
        return ["baselines: the weights file has no training class counts, so none is given."]
    random, majority = baselines["random"], baselines["majority"]
    sim = random["simulation"]
    model = summary["metrics"]
    lift = model["f1_macro"]["value"] - random["exact"]["f1_macro"]
    return [
        "random = guess each class with its training frequency (exact expectation); "
        f"majority = always '{majority['class']}'.",
        f"simulated random guessers ({sim['draws']}, seed {sim['seed']}): "
        f"macro-F1 {sim['f1_macro']['mean']:.3f} [{sim['f1_macro']['ci_low']:.3f}, "
        f"{sim['f1_macro']['ci_high']:.3f}], accuracy {sim['accuracy']['mean']:.3f} "
        f"[{sim['accuracy']['ci_low']:.3f}, {sim['accuracy']['ci_high']:.3f}].",
        f"lift over random: macro-F1 {lift:+.3f}.",
    ]


def _per_class_lines(summary: dict[str, Any]) -> list[str]:
    rows = summary["per_class"]
    width = max(12, *(len(row["class"]) for row in rows))
    title = "per class"
    if len(rows) > FULL_TABLE_CLASSES:
        rows = sorted(rows, key=lambda row: row["f1"])[:WEAKEST_SHOWN]
        title = f"per class: the {WEAKEST_SHOWN} lowest F1 of {len(summary['per_class'])}"
    lines = [title, f"  {'class':<{width}} precision recall     f1 support"]
    for row in rows:
        lines.append(
            f"  {row['class']:<{width}} {row['precision']:9.3f} {row['recall']:6.3f} "
            f"{row['f1']:6.3f} {row['support']:7d}"
        )
    return lines


def _confused_lines(summary: dict[str, Any]) -> list[str]:
    pairs = summary["most_confused"]
    if not pairs:
        return ["most confused: none, every item is on the diagonal."]
    lines = ["most confused (true -> predicted)"]
    for pair in pairs:
        lines.append(
            f"  {pair['true']} -> {pair['predicted']}: {pair['count']} "
            f"({pair['share_of_true']:.0%} of {pair['true']})"
        )
    return lines


def format_text(summary: dict[str, Any], title: str) -> str:
    """The terminal report: headline metrics, CIs, baselines, per-class table, confusions."""
    sections = [
        [title],
        _headline_table(summary),
        _baseline_lines(summary),
        _per_class_lines(summary),
        _confused_lines(summary),
    ]
    return "\n\n".join("\n".join(section) for section in sections)


def top_k_columns(k: int) -> list[str]:
    """Column names of the top-k block of predictions.csv."""
    return [name for i in range(1, k + 1) for name in (f"top{i}", f"top{i}_probability")]


def write_predictions_csv(
    path: str | Path,
    paths: Sequence[str],
    y_true: Sequence[int],
    probabilities: np.ndarray,
    classes: Sequence[str],
    k: int = 5,
) -> Path:
    """One row per item: path, true label, predicted label, its probability, the top-k."""
    k = min(k, len(classes))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "true_label", "predicted_label", "probability", *top_k_columns(k)])
    for item, truth, top, probs in zip(paths, y_true, order, probabilities, strict=True):
        ranked = [value for c in top for value in (classes[c], f"{probs[c]:.6f}")]
        writer.writerow([item, classes[truth], classes[top[0]], f"{probs[top[0]]:.6f}", *ranked])
    return atomic_write_text(path, buffer.getvalue())


def _json_safe(value: Any) -> Any:
    """NaN (an undefined metric, e.g. ROC-AUC with one class) → null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def write_metrics_json(path: str | Path, summary: dict[str, Any], run: dict[str, Any]) -> Path:
    """metrics.json: the run's context under "run", then every number of the summary."""
    return atomic_write_json(path, _json_safe({"run": run, **summary}))


def _save_figure(figure, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    path: str | Path, matrix: np.ndarray, classes: Sequence[str], *, normalized: bool
) -> Path:
    """A seaborn heatmap with class names; the figure grows with the class count and cell numbers
    are dropped above ANNOTATE_CLASSES classes, so 2 to 100 classes stay readable."""
    plt = _pyplot()
    import seaborn as sns

    matrix = np.asarray(matrix, dtype=float)
    if normalized:
        totals = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    count = len(classes)
    # About 0.4 inch (29 pt) per cell: room for an 8 pt class name at any class count.
    side = max(5.0, 0.4 * count + 2.5)
    label_size = 11 if count <= ANNOTATE_CLASSES else 8
    # Numbers only where something happened: a grid of zeros hides the few mistakes.
    labels = np.where(matrix > 0, np.char.mod("%.2f" if normalized else "%.0f", matrix), "")
    annotate = labels if count <= ANNOTATE_CLASSES else False
    figure, axes = plt.subplots(figsize=(side + 1.5, side))
    sns.heatmap(
        matrix,
        ax=axes,
        cmap="Blues",
        vmin=0,
        vmax=1 if normalized else None,
        annot=annotate,
        fmt="",
        annot_kws={"size": max(6.0, min(10.0, 120 / max(count, 1)))},
        xticklabels=list(classes),
        yticklabels=list(classes),
        square=True,
        cbar_kws={
            "shrink": 0.7 if count <= ANNOTATE_CLASSES else 0.3,
            "label": "share of true class" if normalized else "images",
        },
        linewidths=0.3 if count <= 50 else 0,
        linecolor="white",
    )
    axes.tick_params(labelsize=label_size)
    axes.set_xticklabels(axes.get_xticklabels(), rotation=90)
    axes.set_yticklabels(axes.get_yticklabels(), rotation=0)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    kind = "rows sum to 1" if normalized else "counts"
    axes.set_title(f"Confusion matrix ({kind}), {count} classes", fontsize=max(12, side))
    return _save_figure(figure, path)


def plot_error_gallery(
    path: str | Path,
    paths: Sequence[str | Path],
    y_true: Sequence[int],
    probabilities: np.ndarray,
    classes: Sequence[str],
    limit: int = GALLERY_SIZE,
) -> Path:
    """The most confident mistakes, one thumbnail each, titled true / predicted (probability)."""
    plt = _pyplot()
    y_true = np.asarray(y_true)
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]  # most confident first
    if len(wrong) == 0:
        figure, axes = plt.subplots(figsize=(5, 1.5))
        axes.axis("off")
        axes.text(0.5, 0.5, f"No mistakes on {len(y_true)} images.", ha="center", va="center")
        return _save_figure(figure, path)
    columns = min(4, len(wrong))
    rows = math.ceil(len(wrong) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3 * columns, 3.4 * rows), squeeze=False)
    for axes in grid.ravel():
        axes.axis("off")
    for axes, index in zip(grid.ravel(), wrong, strict=False):
        image = open_rgb(paths[index])
        image.thumbnail((256, 256))
        axes.imshow(image)
        axes.set_title(
            f"true: {classes[y_true[index]]}\n"
            f"pred: {classes[predicted[index]]} ({confidence[index]:.2f})",
            fontsize=9,
            color="firebrick",
        )
    mistakes = int((predicted != y_true).sum())
    figure.suptitle(
        f"Most confident mistakes: {len(wrong)} shown of {mistakes} among {len(y_true)} images"
    )
    return _save_figure(figure, path)
