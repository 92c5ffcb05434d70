"""Mixup and CutMix on whole training batches (`data.mixing:`), with soft targets for the loss.

Mixup (Zhang et al., 2018) blends every image with another of the batch, CutMix (Yun et al.,
2019) pastes a box of another image in; either way the target becomes the two labels weighted
by their share of the pixels. Both work on the augmented float batch on the training device,
after TrainPreset, as timm's `Mixup` does: the partner of image i is image N-1-i (the batch is
shuffled already), one mixing weight per batch.

The loss gets the soft targets under the batch key `loss_targets` (the config's criterion
callback reads that key; plain `targets` when nothing is mixed, and in validation), while the
metric callbacks keep reading the hard `targets`: accuracy and F1 need class indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from imgclf.errors import InputError

LOSS_TARGETS = "loss_targets"


@dataclass(frozen=True)
class MixSettings:
    """`data.mixing:`: mixup_alpha / cutmix_alpha (0 turns each off), the share of batches
    mixed (`prob`) and, when both are on, the share of mixed batches that use CutMix."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    cutmix_share: float = 0.5

    @property
    def enabled(self) -> bool:
        """Whether any batch is ever mixed."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MixSettings:
        """Read and check `config["data"]["mixing"]` (absent: no mixing)."""
        block = (config.get("data") or {}).get("mixing") or {}
        if not isinstance(block, dict):
            raise InputError(f"data.mixing must be a mapping of keys, got {block!r}.")
        known = cls.__dataclass_fields__
        unknown = sorted(set(block) - set(known))
        if unknown:
            raise InputError(
                f"data.mixing has unknown key {unknown[0]!r}; use {', '.join(known)}."
            )
        values = {}
        for key in known:
            value = block.get(key, getattr(cls, key))
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            high = 1.0 if key in ("prob", "cutmix_share") else float("inf")
            if not number or not 0 <= value <= high:
                bounds = "between 0 and 1" if high == 1.0 else "at least 0"
                raise InputError(f"data.mixing.{key} is {value!r}; it must be a number {bounds}.")
            values[key] = float(value)
        return cls(**values)


class BatchMixer:
    """Mixes a batch per `MixSettings`; random draws from torch's global CPU generator."""

    def __init__(self, settings: MixSettings, num_classes: int) -> None:
        self.settings = settings
        self.num_classes = num_classes

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets (N, classes)); `images` is float NCHW, modified in place."""
        soft = torch.nn.functional.one_hot(targets, self.num_classes).to(images.dtype)
        settings = self.settings
        if not settings.enabled or len(images) < 2 or torch.rand(()) >= settings.prob:
            return images, soft
        use_cutmix = settings.cutmix_alpha > 0 and (
            settings.mixup_alpha <= 0 or torch.rand(()) < settings.cutmix_share
        )
        alpha = settings.cutmix_alpha if use_cutmix else settings.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        partner = images.flip(0)  # flip copies, so images can be changed in place below
        if use_cutmix:
            lam = self._paste_box(images, partner, lam)
        else:
            images.mul_(lam).add_(partner, alpha=1 - lam)
        partner_soft = soft.flip(0)  # a copy, taken before soft is scaled in place
        return images, soft.mul_(lam).add_(partner_soft, alpha=1 - lam)

    @staticmethod
    def _paste_box(images: torch.Tensor, partner: torch.Tensor, lam: float) -> float:
        """Paste a box of area about (1 - lam) of `partner` into `images`; returns the share
        of the original pixels actually left (the box is clipped at the borders)."""
        height, width = images.shape[-2:]
        cut = (1 - lam) ** 0.5
        box_h, box_w = int(height * cut), int(width * cut)
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
        left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
        images[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
        return 1 - (bottom - top) * (right - left) / (height * width)
