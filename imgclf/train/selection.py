"""Which epoch's weights are exported: a rule that does not chase validation noise.

Catalyst's checkpoint callback keeps the epoch with the single best validation macro-F1. On a
small validation set that is a lottery: a fresh-clone `make demo` exported epoch 45 of 100
because 262 validation images scored 1.000 once (every later epoch 0.992-0.996), and that
model scored 0.978 on the test split where later epochs score 0.99+ (issue 14). The rules here:

- `smoothed_f1` (default): the mean validation macro-F1 over the last `window` epochs, the
  current one included; the exported weights are the window's last epoch. One lucky epoch moves
  the mean by 1/window only, and a run whose scores have plateaued ties, where
- ties go to the later epoch: later weights have a lower learning rate (cosine) and a longer
  weight average behind them.
- `loss`: the lowest validation loss. Continuous, so it still ranks models when macro-F1 has
  saturated, but it also rewards confidence, which label smoothing and mixup deliberately
  lower, and it can rise while accuracy still improves.
- `f1`: the single best epoch's macro-F1 (Catalyst's behaviour, for comparison).

`SelectionCallback` writes the chosen epoch's weights (the weight average's when `EmaCallback`
runs, else the live model's) to `checkpoints/selected.pth`, with the rule, its score, the epoch
and that epoch's validation metrics; the export reads it. Its state is rebuilt from
`history.csv` and `selected.pth` when a run resumes.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from catalyst.core.callback import Callback, CallbackNode, CallbackOrder

from imgclf.fileio import atomic_write_bytes
from imgclf.train.callbacks import read_history
from imgclf.train.ema import unwrapped
from imgclf.train.resume import CHECKPOINTS

SELECTED_FILE = "selected.pth"
RULES = ("smoothed_f1", "loss", "f1")
# history.csv's columns for the rules' raw scores.
_HISTORY_COLUMNS = {"f1": "valid_f1_macro", "loss": "valid_loss"}


def rule_score(rule: str, f1_scores: list[float], losses: list[float], window: int) -> float:
    """The rule's score of the latest epoch, given every epoch's valid macro-F1 and loss so
    far (oldest first). Higher is better (the loss is negated)."""
    if rule == "loss":
        return -losses[-1]
    if rule == "f1":
        return f1_scores[-1]
    recent = f1_scores[-window:]
    return sum(recent) / len(recent)


class SelectionCallback(Callback):
    """Keeps `checkpoints/selected.pth`: the weights of the best epoch by `rule` (see module)."""

    def __init__(self, rule: str = "smoothed_f1", window: int = 5, loader_key: str = "valid"):
        # After the metric callbacks and the EMA swap-back, next to the checkpoint callback.
        super().__init__(order=CallbackOrder.external, node=CallbackNode.master)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        if int(window) < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.rule = rule
        self.window = int(window)
        self.loader_key = loader_key
        self.best: float | None = None
        self.f1_scores: list[float] = []
        self.losses: list[float] = []

    def on_stage_start(self, runner) -> None:
        """Start afresh, or pick up the scores and the best so far of a resumed stage."""
        self.best, self.f1_scores, self.losses = None, [], []
        done = runner.global_epoch_step
        rows = [
            row
            for row in read_history(runner.run_dir)
            if row["stage"] == runner.stage_key and int(row["epoch"]) <= done
        ]
        self.f1_scores = [float(row[_HISTORY_COLUMNS["f1"]]) for row in rows]
        self.losses = [float(row[_HISTORY_COLUMNS["loss"]]) for row in rows]
        path = selected_path(runner.run_dir)
        if rows and path.is_file():
            saved = torch.load(path, map_location="cpu")
            if saved.get("stage_key") == runner.stage_key and saved["global_epoch_step"] <= done:
                self.best = float(saved["selection"]["score"])

    def on_epoch_end(self, runner) -> None:
        """Score this epoch; when it is at least as good as the best (ties: later), save it."""
        metrics = runner.epoch_metrics[self.loader_key]
        self.f1_scores.append(float(metrics["f1/_macro"]))
        self.losses.append(float(metrics["loss"]))
        score = rule_score(self.rule, self.f1_scores, self.losses, self.window)
        if self.best is not None and score < self.best:
            return
        self.best = score
        ema = getattr(runner, "ema", None)
        model = ema if ema is not None else unwrapped(runner.model)
        checkpoint = {
            "model_state_dict": model.state_dict(),
            "stage_key": runner.stage_key,
            "stage_epoch_step": runner.stage_epoch_step,
            "global_epoch_step": runner.global_epoch_step,
            "epoch_metrics": {self.loader_key: dict(metrics)},
            "selection": {
                "rule": self.rule,
                "window": self.window if self.rule == "smoothed_f1" else 1,
                "score": score,
                "ema": ema is not None,
            },
        }
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(selected_path(runner.run_dir), buffer.getvalue())


def selected_path(logdir: str | Path) -> Path:
    """Where `SelectionCallback` keeps the chosen weights of a run."""
    return Path(logdir) / CHECKPOINTS / SELECTED_FILE


def describe(selection: dict) -> str:
    """`smoothed_f1 over 5 epochs, EMA weights`: the rule as the table and picture say it."""
    rule = selection.get("rule", "f1")
    text = {
        "smoothed_f1": f"mean valid macro-F1 over {selection.get('window')} epochs",
        "loss": "lowest valid loss",
        "f1": "best valid macro-F1",
    }.get(rule, rule)
    return text + (", EMA weights" if selection.get("ema") else "")
