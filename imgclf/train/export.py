"""What a finished run leaves besides its logdir: the weights file, the picture, the table.

Everything is read back from the logdir (best checkpoint, split, history), never from the live
runner, so the same code serves single-process and distributed runs, whose workers are gone
by the time the parent process exports, and `python -m imgclf.train.reexport` can write the
weights file again from any checkpoint of a run.
"""

from __future__ import annotations

import io
import json
import platform
from itertools import pairwise
from pathlib import Path
from typing import Any

import catalyst
import torch
import torchvision

from imgclf.errors import InputError
from imgclf.fileio import atomic_write
from imgclf.model.preprocessing import Preprocessing
from imgclf.model.weights import WeightsFile, save_weights
from imgclf.train.callbacks import read_history
from imgclf.train.resume import BEST, CHECKPOINTS, load_checkpoint
from imgclf.train.selection import describe, selected_path
from imgclf.train.settings import ExportSettings

SPLIT_FILE = "split.json"
# The merged config of the run, as `catalyst-dl run` dumps it into the logdir.
CONFIG_DUMP = Path("configs") / "_config.json"
# Catalyst's metric key → the weights file's metric name.
EXPORTED_METRICS = {
    "f1/_macro": "f1_macro",
    "precision/_macro": "precision_macro",
    "recall/_macro": "recall_macro",
    "accuracy01": "accuracy",
    "loss": "loss",
}


def best_checkpoint_path(logdir: str | Path) -> Path:
    """The checkpoint to export: the one `SelectionCallback` chose (`selected.pth`) when the
    run has one, else the one Catalyst kept as best of the last stage (by valid macro-F1)."""
    selected = selected_path(logdir)
    return selected if selected.is_file() else Path(logdir) / CHECKPOINTS / BEST


def _run_file(logdir: str | Path, name: str | Path) -> dict[str, Any]:
    path = Path(logdir) / name
    if not path.is_file():
        raise InputError(
            f"{path} does not exist; is {logdir} the logdir of a run that got to epoch 1?"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def run_info(logdir: str | Path) -> dict[str, Any]:
    """`<logdir>/split.json`: classes, split, class counts and eval preset written at start."""
    return _run_file(logdir, SPLIT_FILE)


def run_config(logdir: str | Path) -> dict[str, Any]:
    """The merged config the run in `logdir` was started with."""
    return _run_file(logdir, CONFIG_DUMP)


def write_weights_file(
    logdir: str | Path,
    path: str | Path,
    *,
    arch: str,
    config: dict[str, Any],
    checkpoint_path: str | Path | None = None,
) -> WeightsFile:
    """Write the model of `checkpoint_path` (default: the run's best checkpoint) as a
    self-contained weights file at `path`."""
    checkpoint = load_checkpoint(Path(checkpoint_path or best_checkpoint_path(logdir)))
    if "model_state_dict" not in checkpoint:
        raise InputError(f"{checkpoint_path} holds no model_state_dict; pass a run's checkpoint.")
    info = run_info(logdir)
    valid = checkpoint.get("epoch_metrics", {}).get("valid", {})
    metrics = {name: valid[key] for key, name in EXPORTED_METRICS.items() if key in valid}
    metrics["epoch"] = checkpoint.get("global_epoch_step")
    # selected.pth says its rule; Catalyst's best.pth is the single best epoch; a checkpoint
    # passed by hand (reexport) was chosen by whoever passed it.
    if "selection" in checkpoint:
        metrics["selection"] = describe(checkpoint["selection"])
    elif checkpoint_path is None:
        metrics["selection"] = describe({"rule": "f1"})
    else:
        metrics["selection"] = f"chosen by hand: {Path(checkpoint_path).name}"
    weights = WeightsFile(
        arch=arch,
        classes=info["classes"],
        state_dict=checkpoint["model_state_dict"],
        preprocessing=Preprocessing.for_img_size(info["img_size"]),
        split=info["split"],
        class_counts=info["class_counts"],
        tta=ExportSettings.from_config(config, arch).tta,
        metrics=metrics,
        config=json.loads(json.dumps(config, default=str)),  # plain types only
        versions={
            "python": platform.python_version(),
            "torch": str(torch.__version__),  # a TorchVersion, which weights_only refuses
            "torchvision": str(torchvision.__version__),
            "catalyst": catalyst.__version__,
        },
    )
    save_weights(path, weights)
    return weights


def _column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) if row.get(name) not in (None, "") else float("nan") for row in rows]


def plot_history(logdir: str | Path, path: str | Path, weights: WeightsFile) -> Path:
    """Draw loss, accuracy and macro-F1 per epoch (train and valid) into a PNG at `path`.

    The title names the epoch whose checkpoint became `weights` (not the first epoch with the
    highest score: ties go to the later epoch, and a head-only stage never provides the weights).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; select before pyplot is imported
    import matplotlib.pyplot as plt

    rows = read_history(logdir)
    epochs = [int(row["epoch"]) for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    panels = (("loss", "loss"), ("accuracy", "accuracy"), ("f1_macro", "macro-F1"))
    for axis, (name, title) in zip(axes, panels, strict=True):
        for loader, style in (("train", "-"), ("valid", "-o")):
            axis.plot(epochs, _column(rows, f"{loader}_{name}"), style, label=loader, ms=3)
        # Mark where the fine-tuning stage begins after a head-only stage.
        for previous, row in pairwise(rows):
            if row["stage"] != previous["stage"]:
                axis.axvline(int(row["epoch"]) - 0.5, color="grey", ls=":", lw=1)
        axis.set(title=title, xlabel="epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    if "f1_macro" in weights.metrics:
        rule = weights.metrics.get("selection")
        figure.suptitle(
            f"exported: epoch {weights.metrics.get('epoch')}, "
            f"valid macro-F1 {weights.metrics['f1_macro']:.4f}" + (f" ({rule})" if rule else "")
        )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def summary_table(logdir: str | Path, weights: WeightsFile, seconds: float) -> str:
    """The final terminal table: best epoch, valid macro-F1 and accuracy, time, images/s."""
    rows = read_history(logdir)
    train_speed = [value for value in _column(rows, "train_images_per_s") if value == value]
    mean_speed = sum(train_speed) / len(train_speed) if train_speed else float("nan")
    metrics = weights.metrics
    lines = [
        ("architecture", weights.arch),
        ("classes", str(len(weights.classes))),
        ("epochs run", str(len(rows))),
        ("best epoch", str(metrics.get("epoch"))),
        ("exported by", str(metrics.get("selection", "best valid macro-F1"))),
        ("valid macro-F1", f"{metrics.get('f1_macro', float('nan')):.4f}"),
        ("valid accuracy", f"{metrics.get('accuracy', float('nan')):.4f}"),
        ("training time", f"{seconds:.0f} s"),
        ("train images/s", f"{mean_speed:.0f} (mean over epochs)"),
    ]
    width = max(len(name) for name, _ in lines)
    rule = "-" * (width + 40)
    body = "\n".join(f"{name:<{width}}  {value}" for name, value in lines)
    return f"{rule}\n{body}\n{rule}"
