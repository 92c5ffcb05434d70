"""How an image becomes a model input at evaluation and inference: one description, one transform.

`Preprocessing` (img_size, resize_size, mean, std) is the single description that the weights
file stores, the exported spec embeds and `EvalPreset` applies, so the four values are spelled
in one class only. Training builds its validation transform from it too, so a model is validated
with exactly the transform inference uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms.v2 import functional as F

from imgclf.dataset.presets import IMAGENET_MEAN, IMAGENET_STD, resize_size_for


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize_size`, centre-crop `img_size`, scale to 0..1, then
    normalise with `mean` / `std` (per RGB channel)."""

    img_size: int
    resize_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Files store lists; a frozen dataclass of tuples stays hashable and compares equal.
        object.__setattr__(self, "mean", tuple(float(value) for value in self.mean))
        object.__setattr__(self, "std", tuple(float(value) for value in self.std))

    @classmethod
    def for_img_size(cls, img_size: int) -> Preprocessing:
        """The project's default: ImageNet statistics, resize side img_size / 0.875."""
        return cls(img_size=img_size, resize_size=resize_size_for(img_size))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), as stored in weights files and specs."""
        return {
            "img_size": self.img_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Preprocessing:
        """Read the four keys of `to_dict` from a weights file or spec payload."""
        return cls(
            img_size=int(payload["img_size"]),
            resize_size=int(payload["resize_size"]),
            mean=tuple(payload["mean"]),
            std=tuple(payload["std"]),
        )


class EvalPreset:
    """`preprocessing` applied to one image (PIL or uint8 CHW tensor) or a uint8 NCHW batch."""

    # Images resized per kernel call in `batch` (a group of 224 px images stays in the caches).
    _GROUP = 32

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing
        # ToDtype(scale=True) then Normalize is (x / 255 - mean) / std = x * scale - offset: one
        # fused pass per value (it runs on every single-image prediction).
        std = torch.tensor(preprocessing.std).view(-1, 1, 1)
        self._scale = 1 / (255 * std)
        self._neg_offset = -torch.tensor(preprocessing.mean).view(-1, 1, 1) / std

    def resize(self, image) -> torch.Tensor:
        """The preset's first step: the image (PIL or uint8 tensor) as a plain uint8 tensor,
        its shorter side resized to `resize_size` (antialiased bilinear)."""
        # The kernels on a plain tensor skip v2's tv_tensor dispatch (measured cost:
        # docs/benchmarks.md).
        image = F.to_image(image).as_subclass(torch.Tensor)
        return F.resize_image(image, [self.preprocessing.resize_size], antialias=True)

    def __call__(self, image, out: torch.Tensor | None = None) -> torch.Tensor:
        """The same steps as `v2.Compose([ToImage, Resize, CenterCrop, ToDtype, Normalize])`
        (equal within 1e-6), with v2's tensor kernels; written into `out` when given (a
        reused engine input, see imgclf.model.single_image)."""
        image = F.center_crop_image(self.resize(image), [self.preprocessing.img_size])
        # addcmul reads the uint8 crop and writes the float32 result in one pass, instead of a
        # float copy, a multiply and a subtract (equal to the three-pass form within 2e-7;
        # measured: docs/benchmarks.md).
        if self._scale.device != image.device:  # a batch on the GPU, in training
            self._scale = self._scale.to(image.device)
            self._neg_offset = self._neg_offset.to(image.device)
        return torch.addcmul(self._neg_offset, image, self._scale, out=out)

    def batch(
        self, images: Sequence[torch.Tensor], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """uint8 (3, H, W) tensors → the normalised (N, 3, img_size, img_size) batch, exactly
        `torch.stack([self(image) for image in images])`; written into `out` when given.

        Images of one size are resized a group at a time, one kernel call for the group (for a
        small photo the per-call overhead cost more than the resize itself: docs/benchmarks.md,
        Search); the normalisation runs per image into its row of `out`, the pass that stays in
        the caches (on a whole 224 px batch it took three times as long).
        """
        size = self.preprocessing.img_size
        if out is None:
            out = torch.empty(len(images), 3, size, size)
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(row)
        for rows in groups.values():
            for start in range(0, len(rows), self._GROUP):
                part = rows[start : start + self._GROUP]
                # Stacked channels-last: a decoded image is laid out (H, W, 3) in memory, so
                # this is a plain copy, and the resize kernel works in that layout anyway
                # (three times faster than stacking and resizing (N, 3, H, W) at 224 px).
                stacked = torch.stack([images[row].permute(1, 2, 0) for row in part])
                stacked = stacked.permute(0, 3, 1, 2)
                resized = F.resize_image(stacked, [self.preprocessing.resize_size], antialias=True)
                for row, crop in zip(part, F.center_crop_image(resized, [size]), strict=True):
                    torch.addcmul(self._neg_offset, crop, self._scale, out=out[row])
        return out
