"""Train and eval transforms, the one definition used by training, evaluation and inference.

Both presets take an image as a uint8 CHW tensor (or a PIL image) and return a normalised float
tensor. Following torchvision's `references/classification/presets.py`: small keyword-only classes.
The eval preset's parameters travel inside the weights file, so inference never guesses them.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The usual 224 → 256 ratio between the centre crop and the resize before it.
CROP_RATIO = 0.875


def resize_size_for(img_size: int) -> int:
    """Side the shorter edge is resized to before the eval centre crop of `img_size`."""
    return round(img_size / CROP_RATIO)


class EvalPreset:
    """Resize the shorter side to `resize_size`, centre-crop `img_size`, scale, normalise."""

    def __init__(
        self,
        *,
        img_size: int,
        resize_size: int | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.img_size = img_size
        self.resize_size = resize_size or resize_size_for(img_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.transforms = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(self.resize_size, antialias=True),
                v2.CenterCrop(img_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, image):
        return self.transforms(image)


class TrainPreset:
    """Random resized crop, horizontal flip and colour jitter, then scale and normalise."""

    def __init__(
        self,
        *,
        img_size: int,
        scale: tuple[float, float] = (0.25, 1.0),
        hflip_prob: float = 0.5,
        color_jitter: float = 0.2,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        steps: list = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=scale, antialias=True)]
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if color_jitter > 0:
            steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        self.transforms = v2.Compose(steps)

    def __call__(self, image):
        return self.transforms(image)
