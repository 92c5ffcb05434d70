"""The summary and the report files: text, metrics.json, predictions.csv, decodable pictures."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from imgclf.evaluate import report
from imgclf.evaluate.summary import summarize_evaluation
from tests.conftest import TINY_CLASSES, make_image_folder

CLASSES = sorted(TINY_CLASSES)


@pytest.fixture
def evaluated(tmp_path):
    """Twelve tiny images with probabilities that get two of them wrong."""
    root = make_image_folder(tmp_path / "images", per_class=4)
    paths = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.jpg"))
    y_true = np.array([CLASSES.index(path.split("/")[0]) for path in paths])
    probabilities = np.full((len(paths), 3), 0.05)
    probabilities[np.arange(len(paths)), y_true] = 0.9
    probabilities[0] = [0.1, 0.8, 0.1]  # a circle called square, confidently
    probabilities[5] = [0.1, 0.3, 0.6]  # a square called triangle
    counts = {"circle": 10, "square": 20, "triangle": 10}
    summary = summarize_evaluation(CLASSES, y_true, probabilities, counts, resamples=200, seed=0)
    return root, paths, y_true, probabilities, summary


def test_summary_has_every_number(evaluated):
    _, _, _, _, summary = evaluated
    assert set(summary["metrics"]) == {
        "f1_macro",
        "accuracy",
        "balanced_accuracy",
        "roc_auc_macro",
    }
    assert summary["metrics"]["accuracy"]["value"] == pytest.approx(10 / 12)
    random = summary["baselines"]["random"]
    # Exact: p = (0.25, 0.5, 0.25), q = (1/3, 1/3, 1/3) → sum p_k q_k = 1/3.
    assert random["exact"]["accuracy"] == pytest.approx(1 / 3)
    assert set(random["simulation"]) >= {"draws", "seed", "f1_macro", "accuracy"}
    assert summary["baselines"]["majority"]["class"] == "square"
    assert summary["baselines"]["majority"]["accuracy"] == pytest.approx(4 / 12)
    assert [row["class"] for row in summary["per_class"]] == CLASSES
    assert summary["most_confused"][0] == {
        "true": "circle",
        "predicted": "square",
        "count": 1,
        "share_of_true": 0.25,
    }
    assert np.trace(np.array(summary["confusion_matrix"])) == 10


def test_text_report_reads_at_a_glance(evaluated):
    *_, summary = evaluated
    text = report.format_text(summary, "title line")
    for expected in ("macro-F1", "accuracy", "macro ROC-AUC", "random", "majority", "lift"):
        assert expected in text
    assert "circle -> square: 1 (25% of circle)" in text
    assert "triangle" in text.split("per class")[1]


def test_files_are_written_and_readable(evaluated, tmp_path):
    root, paths, y_true, probabilities, summary = evaluated
    out = tmp_path / "out"
    metrics_path = report.write_metrics_json(out / "metrics.json", summary, {"weights": "w.pth"})
    loaded = json.loads(metrics_path.read_text())
    assert loaded["run"] == {"weights": "w.pth"}
    for field in ("metrics", "baselines", "per_class", "most_confused", "confusion_matrix"):
        assert field in loaded
    csv_path = report.write_predictions_csv(
        out / "predictions.csv", paths, y_true, probabilities, CLASSES
    )
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == len(paths)
    assert rows[0]["path"] == paths[0]
    assert rows[0]["true_label"] == "circle"
    assert rows[0]["predicted_label"] == "square"
    assert float(rows[0]["probability"]) == pytest.approx(0.8)
    assert (rows[0]["top1"], rows[0]["top2"]) == ("square", "circle")  # stable order on ties
    assert "top4" not in rows[0]  # three classes: the top-k stops at 3
    cm = np.array(summary["confusion_matrix"])
    for normalized in (False, True):
        picture = report.plot_confusion_matrix(
            out / f"cm_{normalized}.png", cm, CLASSES, normalized=normalized
        )
        assert Image.open(picture).size[0] > 300
    gallery = report.plot_error_gallery(
        out / "errors.png", [root / path for path in paths], y_true, probabilities, CLASSES
    )
    with Image.open(gallery) as image:
        image.load()


def test_error_gallery_without_mistakes(tmp_path):
    picture = report.plot_error_gallery(
        tmp_path / "errors.png", [], np.array([0, 1]), np.eye(2), ["a", "b"]
    )
    with Image.open(picture) as image:
        image.load()


@pytest.mark.parametrize("count", [2, 100])
def test_confusion_matrix_scales_with_the_class_count(tmp_path, count):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 3, (count, count)) + np.eye(count, dtype=int) * 20
    classes = [f"class_{index:03d}" for index in range(count)]
    picture = report.plot_confusion_matrix(tmp_path / "cm.png", cm, classes, normalized=True)
    width = Image.open(picture).size[0]
    # About 0.4 inch (40 px at 100 dpi) per class, less the trimmed margins.
    assert width > 25 * count if count > 20 else 400 < width < 1200


def test_undefined_metrics_are_null_in_strict_json(tmp_path):
    # One class in the test set: no negatives for it, no positives for the others → no ROC-AUC.
    probabilities = np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    counts = {"a": 1, "b": 1}
    summary = summarize_evaluation(["a", "b"], [0, 0, 0], probabilities, counts, resamples=50)
    path = report.write_metrics_json(tmp_path / "metrics.json", summary, {})

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    loaded = json.loads(path.read_text(), parse_constant=refuse)
    assert loaded["metrics"]["roc_auc_macro"] == {"value": None, "ci_low": None, "ci_high": None}
    assert "macro ROC-AUC" in report.format_text(summary, "one class")
