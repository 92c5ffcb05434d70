"""Learning-rate schedules stepped once per batch (SchedulerCallback mode "batch").

`WarmupCosineLR` takes the same `epochs` / `steps_per_epoch` arguments as torch's `OneCycleLR`,
so the runner fills both in from the stage length and the train loader, and a config switches
between them by changing `_target_` alone.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineLR(LambdaLR):
    """Linear warm-up from `warmup_start` × lr to lr, then cosine decay to `min_ratio` × lr."""

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 3.0,
        warmup_start: float = 0.01,
        min_ratio: float = 0.01,
        last_epoch: int = -1,
    ) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.warmup_epochs = warmup_epochs
        self.fit_to_epochs(epochs)
        self.warmup_start = warmup_start
        self.min_ratio = min_ratio
        super().__init__(optimizer, self.factor, last_epoch=last_epoch)

    def fit_to_epochs(self, epochs: int) -> None:
        """End the schedule after `epochs` epochs instead (the time budget sets this once it
        knows how many epochs fit): the cosine is stretched or shrunk from the current step on,
        the warm-up stays as it is."""
        self.total_steps = max(1, epochs * self.steps_per_epoch)
        warmup = round(self.warmup_epochs * self.steps_per_epoch)
        self.warmup_steps = min(self.total_steps - 1, warmup)

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate after `step` optimizer steps."""
        if step < self.warmup_steps:
            return self.warmup_start + (1 - self.warmup_start) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def state_dict(self) -> dict:
        # The lambda is this object's own method, rebuilt from the numbers above on load;
        # LambdaLR would otherwise copy the method's attributes into the checkpoint.
        state = super().state_dict()
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)
        return state
