"""A time budget for a stage (`stages.<stage>.max_minutes`), with the schedule fitted to it.

Cutting a run off when time is up leaves the learning rate high and the model unfinished. So
`TimeBudgetCallback` times the first epochs, sets the stage length to the number of epochs
the remaining time allows (never more than the stage's `num_epochs`, which becomes an upper
bound) and stretches or shrinks the learning-rate schedule to end there, so the cosine decay
finishes inside the budget. Two epochs are timed before the fit (the first is slower: caches
and allocator warm up; both are still in the default 3-epoch warm-up, whose rates do not depend
on the length). Afterwards the plan only ever shrinks: when the machine gets slower and the
remaining time no longer covers the planned epochs, the schedule is refitted to fewer; when
time is up regardless, the stage ends after the current epoch. Validation and checkpoint time
count, since they are part of every epoch; the final export after the stage does not.

The time spent and the plan go to `checkpoints/budget.json` after every epoch, so a resumed
run continues with the budget that is left.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from catalyst.core.callback import Callback, CallbackNode, CallbackOrder

from imgclf.fileio import atomic_write_json
from imgclf.train.resume import CHECKPOINTS

BUDGET_FILE = "budget.json"
MEASURED_EPOCHS = 2


class TimeBudgetCallback(Callback):
    """Fits the stage's epoch count and LR schedule to `max_minutes` (see the module)."""

    def __init__(self, max_minutes: float) -> None:
        super().__init__(order=CallbackOrder.external + 1, node=CallbackNode.all)
        if not max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {max_minutes}")
        self.budget_s = float(max_minutes) * 60
        self.durations: list[float] = []
        self.spent_before = 0.0  # time spent before a resume
        self.fitted: int | None = None
        self._stage_started = 0.0
        self._epoch_started = 0.0

    def on_stage_start(self, runner) -> None:
        """Start the clock; a resumed stage picks up the time it had spent."""
        self.durations, self.spent_before, self.fitted = [], 0.0, None
        saved = _budget_path(runner)
        if runner.stage_epoch_step > 0 and saved.is_file():
            state = json.loads(saved.read_text(encoding="utf-8"))
            if state["stage"] == runner.stage_key:
                self.durations = state["durations"][: runner.stage_epoch_step]
                self.spent_before = sum(self.durations)
                self.fitted = state["fitted"]
                if self.fitted is not None:
                    self._set_length(runner, self.fitted)
        self._stage_started = time.perf_counter()

    def on_epoch_start(self, runner) -> None:
        """Start the epoch's clock."""
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, runner) -> None:
        """Record the epoch, refit the plan when due, stop when the budget is spent."""
        self.durations.append(time.perf_counter() - self._epoch_started)
        done = runner.stage_epoch_step
        left = self.budget_s - self.spent()
        if len(self.durations) >= MEASURED_EPOCHS:
            # The recent epochs, not the first one: it pays for warm-ups.
            recent = self.durations[1:][-3:]
            per_epoch = statistics.median(recent)
            allowed = done + max(0, math.floor(left / per_epoch))
            target = min(allowed, self.upper_bound(runner))
            if self.fitted is None or target < self.fitted:
                self.fitted = max(done, target)
                self._set_length(runner, self.fitted)
                if runner.engine.is_master_process:
                    print(
                        f"time budget: {self.budget_s / 60:g} min, {per_epoch:.1f} s per epoch "
                        f"-> {self.fitted} epochs in stage {runner.stage_key!r}"
                    )
        if left <= 0:
            runner.stage_epoch_len = done  # the stage loop ends after this epoch
        if runner.engine.is_master_process:
            atomic_write_json(
                _budget_path(runner),
                {
                    "stage": runner.stage_key,
                    "budget_s": self.budget_s,
                    "durations": self.durations,
                    "fitted": self.fitted,
                },
            )

    def spent(self) -> float:
        """Seconds of the budget used so far (before a resume included)."""
        return self.spent_before + time.perf_counter() - self._stage_started

    @staticmethod
    def upper_bound(runner) -> int:
        """The stage's configured `num_epochs`: the budget never lengthens a stage beyond it."""
        return runner.get_stage_len(runner.stage_key)

    @staticmethod
    def _set_length(runner, epochs: int) -> None:
        runner.stage_epoch_len = epochs
        stretch = getattr(runner.scheduler, "fit_to_epochs", None)
        if stretch is not None:
            stretch(epochs)


def _budget_path(runner) -> Path:
    return Path(runner.run_dir) / CHECKPOINTS / BUDGET_FILE
