"""`python utils/inference.py` without --predict / --export: evaluate a model on held-out images.

Which images: the split stored in the weights file (test part when it has one, else valid), or
`--data DIR` (a manifest or `<label>/` folders, read by imgclf.dataset.read_samples). Then: batched
inference, every metric with bootstrap CIs and baselines (imgclf.evaluate), and the report files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.dataset import samples as dataset_samples
from imgclf.errors import InputError
from imgclf.evaluate import report
from imgclf.evaluate.summary import summarize_evaluation
from imgclf.model.predictor import load_predictor
from imgclf.model.weights import load_weights
from imgclf.predict.batches import DEFAULT_BATCH_SIZE, predict_items
from imgclf.predict.inputs import Item

SPLIT_PARTS = ("train", "valid", "test")


@dataclass
class EvaluationResult:
    """What the entry script prints and how it exits."""

    text: str
    written: list[Path]
    errors: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeldOut:
    """The labelled images to evaluate on, as absolute paths plus where they came from."""

    root: Path
    paths: list[str]  # relative to root, as written to predictions.csv
    labels: list[str]
    description: str


def _stored_split(weights_path: Path, split: dict, part: str | None) -> HeldOut:
    parts = split.get("parts") or {}
    if part is None:
        part = "test" if parts.get("test") else "valid"
    rows = parts.get(part) or []
    if not rows:
        stored = ", ".join(f"{name} ({len(parts.get(name) or [])})" for name in SPLIT_PARTS)
        raise InputError(
            f"{weights_path} stores no {part!r} images (parts: {stored}); "
            "pick another --split or pass --data DIR."
        )
    root = Path(split.get("root", ""))
    if not root.is_dir():
        raise InputError(
            f"The data root {root} stored in {weights_path} does not exist here; run from the "
            "project folder it was trained in or pass --data DIR with labelled images."
        )
    return HeldOut(
        root=root,
        paths=[path for path, _ in rows],
        labels=[label for _, label in rows],
        description=f"the {part} split of {root}",
    )


def _data_folder(data: Path, part: str | None) -> HeldOut:
    _, samples = dataset_samples.read_samples(data)
    if part is not None:
        samples = [sample for sample in samples if sample.split == part]
        if not samples:
            raise InputError(
                f"{data} has no images with split {part!r}; drop --split to evaluate all of them."
            )
    where = f"the {part} images of {data}" if part else str(data)
    return HeldOut(
        root=data,
        paths=[sample.path for sample in samples],
        labels=[sample.label for sample in samples],
        description=where,
    )


def _label_indices(held_out: HeldOut, classes: list[str], weights_path: Path) -> list[int]:
    index = {name: k for k, name in enumerate(classes)}
    foreign = sorted(set(held_out.labels) - set(index))
    if foreign:
        raise InputError(
            f"{held_out.root} has classes the model {weights_path} does not know "
            f"({', '.join(foreign[:10])}{', ...' if len(foreign) > 10 else ''}); "
            f"its classes are: {', '.join(classes)}."
        )
    return [index[label] for label in held_out.labels]


def _write_report(
    summary: dict[str, Any],
    run: dict[str, Any],
    root: Path,
    paths: list[str],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    out_dir: Path,
    pictures_dir: Path,
) -> list[Path]:
    """metrics.json and predictions.csv in `out_dir`, the three pictures in `pictures_dir`."""
    classes = summary["classes"]
    counts = np.asarray(summary["confusion_matrix"])
    return [
        report.write_metrics_json(out_dir / "metrics.json", summary, run),
        report.write_predictions_csv(
            out_dir / "predictions.csv", paths, y_true, probabilities, classes
        ),
        report.plot_confusion_matrix(
            pictures_dir / "confusion_matrix.png", counts, classes, normalized=False
        ),
        report.plot_confusion_matrix(
            pictures_dir / "confusion_matrix_normalized.png", counts, classes, normalized=True
        ),
        report.plot_error_gallery(
            pictures_dir / "errors.png",
            [root / path for path in paths],
            y_true,
            probabilities,
            classes,
        ),
    ]


def evaluate(
    weights: str | Path,
    *,
    data: str | Path | None = None,
    split: str | None = None,
    out_dir: str | Path = "reports",
    pictures_dir: str | Path = "pictures",
    backend: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    resamples: int = 1000,
    seed: int = 0,
    tta: bool | None = None,
) -> EvaluationResult:
    """Evaluate `weights` and write metrics.json, predictions.csv and the pictures.

    Unreadable images are reported and left out of the metrics; everything else still runs.
    `tta`: average each image with its mirror; None: as the weights file says.
    """
    weights = Path(weights)
    if weights.suffix != ".pth":
        raise InputError(
            f"The report needs the weights file (.pth) for its stored split and training class "
            f"counts, not {weights}; pass --weights weights/<arch>.pth."
        )
    stored = load_weights(weights)
    held_out = (
        _data_folder(Path(data), split)
        if data is not None
        else _stored_split(weights, stored.split, split)
    )
    # Check the classes before loading an engine (which may mean exporting in memory).
    y_all = _label_indices(held_out, stored.classes, weights)
    predictor = load_predictor(stored, backend, tta=tta)
    items = [
        Item(str(held_out.root / path), label=label)
        for path, label in zip(held_out.paths, y_all, strict=True)
    ]
    outcome = predict_items(
        predictor, items, batch_size=batch_size, workers=workers, progress="evaluating"
    )
    errors = [f"{held_out.paths[i]}: {reason}" for i, reason in sorted(outcome.errors.items())]
    ok = outcome.ok
    if len(ok) == 0:
        raise InputError(
            f"None of the {len(items)} images of {held_out.description} could be read; "
            f"first failure: {errors[0]}."
        )
    classes = list(predictor.classes)
    y_true = np.asarray(y_all)[ok]
    probabilities = outcome.probabilities[ok]
    paths = [held_out.paths[i] for i in ok]
    summary = summarize_evaluation(
        classes,
        y_true,
        probabilities,
        stored.class_counts.get("train"),
        resamples=resamples,
        seed=seed,
    )
    run = {
        "weights": str(weights),
        "arch": stored.arch,
        "backend": predictor.backend,
        "tta": predictor.tta,
        "data": held_out.description,
        "data_root": str(held_out.root),
        "images": len(items),
        "failed": errors,
        "seconds": round(outcome.seconds, 3),
        "images_per_second": round(len(items) / max(outcome.seconds, 1e-9), 1),
    }
    written = _write_report(
        summary,
        run,
        held_out.root,
        paths,
        y_true,
        probabilities,
        Path(out_dir),
        Path(pictures_dir),
    )
    title = (
        f"{stored.arch} from {weights}, backend {predictor.backend}"
        f"{', mirror-averaged (--no-tta: off)' if predictor.tta else ''}\n"
        f"{held_out.description}: {len(ok)} images, {len(classes)} classes "
        f"({run['images_per_second']:.0f} images/s)"
    )
    if errors:
        title += f"\n{len(errors)} image(s) could not be read and are left out (listed below)."
    return EvaluationResult(report.format_text(summary, title), written, errors, summary)
