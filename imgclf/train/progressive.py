"""Progressive resizing (`data.progressive:`): smaller training images early, full size late.

Early epochs learn coarse shapes, which small images show as well as large ones, at a fraction
of the cost (a step's cost grows with the pixel count); the last epochs train at the full
`data.img_size`, the size validation and inference use, so the model and its BatchNorm
statistics end up matched to it (as in fast.ai's and FFCV's ImageNet recipes).

The cache holds every image once, at `img_size / 0.875`, and TrainPreset crops at `img_size`;
the smaller sizes are made from that batch with one antialiased resize on the training device,
so the cache, the workers and the augmentation stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from imgclf.errors import InputError

# Sizes are rounded to this multiple: the networks' strides divide it.
SIZE_STEP = 8
MIN_SIZE = 16


@dataclass(frozen=True)
class ProgressiveResize:
    """`start_scale` × img_size at the first epoch, growing linearly to img_size at the
    `full_from` fraction of the stage's epochs, then img_size to the end. `start_scale: 1`
    (the default) turns it off."""

    start_scale: float = 1.0
    full_from: float = 0.5

    @property
    def enabled(self) -> bool:
        """Whether any epoch trains below full size."""
        return self.start_scale < 1.0

    def size(self, img_size: int, epoch: int, epochs: int) -> int:
        """The training image side at 1-based `epoch` of `epochs`."""
        progress = (epoch - 1) / max(1.0, self.full_from * epochs)
        scale = self.start_scale + (1 - self.start_scale) * min(1.0, progress)
        side = round(img_size * scale / SIZE_STEP) * SIZE_STEP
        return min(img_size, max(MIN_SIZE, side))

    @staticmethod
    def resize(images: torch.Tensor, side: int) -> torch.Tensor:
        """A float NCHW batch resized to `side` x `side` (antialiased bilinear)."""
        if images.shape[-1] == side and images.shape[-2] == side:
            return images
        return torch.nn.functional.interpolate(
            images, size=(side, side), mode="bilinear", antialias=True, align_corners=False
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ProgressiveResize:
        """Read and check `config["data"]["progressive"]` (absent: off)."""
        block = (config.get("data") or {}).get("progressive") or {}
        if not isinstance(block, dict):
            raise InputError(f"data.progressive must be a mapping of keys, got {block!r}.")
        unknown = sorted(set(block) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(
                f"data.progressive has unknown key {unknown[0]!r}; use start_scale, full_from."
            )
        values = {}
        for key in cls.__dataclass_fields__:
            value = block.get(key, getattr(cls, key))
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not 0 < value <= 1:
                raise InputError(
                    f"data.progressive.{key} is {value!r}; it must be a fraction in (0, 1]."
                )
            values[key] = float(value)
        return cls(**values)
