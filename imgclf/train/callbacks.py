"""Callbacks Catalyst lacks: images/s per loader, a per-epoch history for the picture, and
checkpoints written atomically.

The history (`<logdir>/history.csv`, one row per epoch across stages, rewritten atomically each
epoch) is what `pictures/logs.png` and the final table are drawn from. Catalyst's own CSV logger
restarts its step at every stage and appends a second header on resume, so it can't serve.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import torch
from catalyst.core.callback import Callback, CallbackNode, CallbackOrder

from imgclf.fileio import atomic_write_bytes, atomic_write_text
from imgclf.train.catalyst_compat import CheckpointWriterCallback

HISTORY_FILE = "history.csv"
# Our column name → the key Catalyst's metric callbacks write into `loader_metrics`.
METRIC_KEYS = {
    "loss": "loss",
    "accuracy": "accuracy01",
    "f1_macro": "f1/_macro",
    "images_per_s": "images_per_s",
}
LOADERS = ("train", "valid")
HISTORY_COLUMNS = ["epoch", "stage", "stage_epoch", "lr"] + [
    f"{loader}_{name}" for loader in LOADERS for name in METRIC_KEYS
]


class ThroughputCallback(Callback):
    """Adds `images_per_s` (samples seen by all processes / wall time) to each loader's metrics."""

    def __init__(self) -> None:
        super().__init__(order=CallbackOrder.metric, node=CallbackNode.all)
        self._start = 0.0

    def on_loader_start(self, runner) -> None:
        """Start the loader's clock."""
        self._start = time.perf_counter()

    def on_loader_end(self, runner) -> None:
        """Images per second over the whole loader, data loading included."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        runner.loader_metrics["images_per_s"] = runner.loader_sample_step / elapsed


def read_history(logdir: str | Path) -> list[dict[str, str]]:
    """Rows of `<logdir>/history.csv` (empty when there is none yet)."""
    path = Path(logdir) / HISTORY_FILE
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_history(logdir: str | Path, rows: list[dict]) -> Path:
    """Write `rows` to `<logdir>/history.csv` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(Path(logdir) / HISTORY_FILE, buffer.getvalue())


class HistoryCallback(Callback):
    """Keeps `<logdir>/history.csv`: one row per finished epoch, global epoch numbers.

    At a stage start it keeps only the rows up to the runner's global epoch, so a resumed run
    drops the epochs after its checkpoint instead of listing them twice.
    """

    def __init__(self, logdir: str | Path) -> None:
        super().__init__(order=CallbackOrder.external, node=CallbackNode.master)
        self.logdir = Path(logdir)
        self.rows: list[dict] = []

    def on_stage_start(self, runner) -> None:
        """Reload the epochs already done (earlier stage or resumed run)."""
        done = runner.global_epoch_step
        self.rows = [row for row in read_history(self.logdir) if int(row["epoch"]) <= done]

    def on_epoch_end(self, runner) -> None:
        """Append this epoch's metrics and rewrite the file."""
        row: dict = {
            "epoch": runner.global_epoch_step,
            "stage": runner.stage_key,
            "stage_epoch": runner.stage_epoch_step,
            # The schedule steps per batch, so the epoch's last rate is the optimizer's own.
            "lr": runner.optimizer.param_groups[0]["lr"] if runner.optimizer else "",
        }
        for loader in LOADERS:
            metrics = runner.epoch_metrics.get(loader, {})
            for name, key in METRIC_KEYS.items():
                row[f"{loader}_{name}"] = metrics.get(key, "")
        self.rows.append(row)
        write_history(self.logdir, self.rows)


class AtomicCheckpointCallback(CheckpointWriterCallback):
    """Catalyst's CheckpointCallback (same arguments), with every file written atomically.

    Catalyst 21.12 writes `<stage>.<epoch>.pth` with a plain `torch.save`, then copies it over
    `last_full.pth` / `best.pth`: a run killed during that copy would leave a truncated
    `last_full.pth`, the very file needed to resume. Here each file is written to a temporary
    name and renamed, so the previous one stays intact until the new one is complete.
    """

    def write_checkpoint(self, runner, checkpoint: dict, *, is_best: bool, is_last: bool) -> str:
        """Write the epoch's file and its best / last copies, each atomically."""
        suffix = f"{runner.stage_key}.{runner.stage_epoch_step}"
        path = ""
        if self.mode in ("all", "full"):
            path = self._write(checkpoint, f"{suffix}_full", is_best, is_last, "_full")
        if self.mode in ("all", "model"):
            without = ("criterion", "optimizer", "scheduler")
            model_only = {k: v for k, v in checkpoint.items() if all(w not in k for w in without)}
            path = self._write(model_only, suffix, is_best, is_last, "")
        return path

    def _write(self, checkpoint: dict, name: str, is_best: bool, is_last: bool, kind: str) -> str:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        names = [name] + [f"best{kind}"] * is_best + [f"last{kind}"] * is_last
        for target in names:
            atomic_write_bytes(Path(self.logdir) / f"{target}.pth", data)
        return f"{self.logdir}/{name}.pth"
