"""An exponential moving average (EMA) of the weights, validated in place of the live model.

Averaging the weights over the last few epochs smooths out the step-to-step noise of small
batches and small data: the average usually validates better than any single step, and it
changes slowly, so a small validation set picks among models that really differ instead of
noise (issue 14). `EmaCallback` keeps the average, swaps it in for the valid loader (so every
metric callback, the early stopping and the model choice judge the average) and swaps the
live weights back for training. Checkpoints for resume keep the live weights; the average goes
to `checkpoints/ema_last.pth` after every epoch, so a resumed run continues it.
"""

from __future__ import annotations

import io
from copy import deepcopy
from pathlib import Path

import torch
from catalyst.core.callback import Callback, CallbackNode, CallbackOrder

from imgclf.fileio import atomic_write_bytes
from imgclf.train.resume import CHECKPOINTS

EMA_FILE = "ema_last.pth"


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DataParallel / DistributedDataParallel wrapper (or the model)."""
    return getattr(model, "module", model)


class WeightAverage:
    """The EMA of a model's floating-point parameters and buffers (BatchNorm statistics too,
    like timm's ModelEmaV2); integer buffers are copied.

    decay per optimizer step: `0.5 ** (1 / (half_life_epochs * steps_per_epoch))`, i.e. a
    step's weight in the average halves after `half_life_epochs` epochs, whatever the data size.
    Early on the decay is lowered to (1 + n) / (10 + n) after n updates, so the random initial
    weights are forgotten quickly.
    """

    def __init__(self, model: torch.nn.Module, *, half_life_epochs: float, steps_per_epoch: int):
        self.module = deepcopy(unwrapped(model)).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = 0.5 ** (1 / max(1e-9, half_life_epochs * max(1, steps_per_epoch)))
        self.updates = 0
        self._pairs: tuple[list, list, list, list] | None = None

    def _tensor_pairs(self, model: torch.nn.Module) -> tuple[list, list, list, list]:
        """(average floats, live floats, average others, live others), matched by name. The
        optimizer and BatchNorm update the live tensors in place, so the lists stay valid."""
        live = unwrapped(model).state_dict(keep_vars=True)
        floats: tuple[list, list] = ([], [])
        others: tuple[list, list] = ([], [])
        for name, average in self.module.state_dict().items():
            kind = floats if average.is_floating_point() else others
            kind[0].append(average)
            kind[1].append(live[name].detach())
        return floats[0], floats[1], others[0], others[1]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average one step towards `model`'s current weights."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if self._pairs is None:
            self._pairs = self._tensor_pairs(model)
        averages, currents, average_ints, current_ints = self._pairs
        # One fused call over all tensors: a Python loop over mobilenet_v3_small's ~250
        # tensors per step would cost a few percent of a small model's training time.
        torch._foreach_lerp_(averages, currents, 1 - decay)
        for average, current in zip(average_ints, current_ints, strict=True):
            average.copy_(current)

    def state_dict(self) -> dict:
        """The averaged weights and the update count (for resume)."""
        return {"model_state_dict": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.module.load_state_dict(state["model_state_dict"])
        self.updates = int(state["updates"])


class EmaCallback(Callback):
    """Keeps a `WeightAverage` of `runner.model` (updated after every optimizer step) and
    validates it instead of the live weights.

    `runner.ema` is the average while the stage runs (the model choice exports it). Set
    `half_life_epochs` in the config; `enabled: false` turns the callback off, so an override
    file can switch it without deleting the node.
    """

    def __init__(self, half_life_epochs: float = 2.0, enabled: bool = True) -> None:
        # After the optimizer (order optimizer) and the scheduler, before metrics and checkpoint.
        super().__init__(order=CallbackOrder.optimizer + 1, node=CallbackNode.all)
        if half_life_epochs <= 0:
            raise ValueError(f"half_life_epochs must be > 0, got {half_life_epochs}")
        self.half_life_epochs = float(half_life_epochs)
        self.enabled = bool(enabled)
        self.average: WeightAverage | None = None
        self._live: torch.nn.Module | None = None

    def on_stage_start(self, runner) -> None:
        """Start the average from the current weights, or from the saved average on resume."""
        runner.ema = None
        if not self.enabled:
            return
        self.average = WeightAverage(
            runner.model,
            half_life_epochs=self.half_life_epochs,
            steps_per_epoch=len(runner.loaders["train"]),
        )
        saved = _ema_path(runner)
        if runner.stage_epoch_step > 0 and saved.is_file():  # a resumed stage
            state = torch.load(saved, map_location="cpu")
            if (state["stage"], state["stage_epoch"]) == (
                runner.stage_key,
                runner.stage_epoch_step,
            ):
                self.average.load_state_dict(state)
        runner.ema = self.average.module

    def on_batch_end(self, runner) -> None:
        """After each training step, fold the new weights into the average."""
        if self.average is not None and runner.is_train_loader:
            self.average.update(runner.model)

    def on_loader_start(self, runner) -> None:
        """Validate the average: put it in the live model's place until the loader ends."""
        if self.average is not None and not runner.is_train_loader:
            self._live, runner.model = runner.model, self.average.module.eval()

    def on_loader_end(self, runner) -> None:
        """Put the live weights back."""
        if self._live is not None:
            runner.model, self._live = self._live, None

    def on_epoch_end(self, runner) -> None:
        """Save the average next to the resume checkpoint."""
        if self.average is None or not runner.engine.is_master_process:
            return
        buffer = io.BytesIO()
        state = self.average.state_dict()
        state.update(stage=runner.stage_key, stage_epoch=runner.stage_epoch_step)
        torch.save(state, buffer)
        atomic_write_bytes(_ema_path(runner), buffer.getvalue())


def _ema_path(runner) -> Path:
    return Path(runner.run_dir) / CHECKPOINTS / EMA_FILE
