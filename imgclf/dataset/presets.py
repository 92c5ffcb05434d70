"""The training transform and the defaults every transform starts from.

`TrainPreset` augments whole uint8 batches (following torchvision's
`references/classification/presets.py`: a small keyword-only class). The ImageNet statistics and
the crop ratio are the defaults of `imgclf.model.preprocessing.Preprocessing`, whose `EvalPreset`
is the eval transform used by validation, evaluation and inference alike.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as F

from imgclf.dataset.augment import PolicyDraws, TrivialPolicy

# data.augment.policy values: no extra operation, or one TrivialAugment-style one per image.
POLICIES = ("none", "trivial")
# Train-time horizontal flips; a model trained with them is averaged with its mirror at
# inference by default (export.tta: auto).
DEFAULT_HFLIP_PROB = 0.5

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The usual 224 → 256 ratio between the centre crop and the resize before it.
CROP_RATIO = 0.875


def resize_size_for(img_size: int) -> int:
    """Side the shorter edge is resized to before the eval centre crop of `img_size`."""
    return round(img_size / CROP_RATIO)


class TrainPreset:
    """Random resized crop, horizontal flip and colour jitter, then scale and normalise, on a
    whole batch at once.

    Takes a uint8 batch (N, C, H, W) as the cache hands it out (or one CHW image, or a PIL
    image), on the CPU or a GPU, and returns float32 normalised images of `img_size`,
    channels-last, on the same device. Training applies it to each batch in the DataLoader
    workers, or without workers on the training device (`ImageClassifierRunner.get_loaders`).

    The steps mean what `v2.Compose([RandomResizedCrop, RandomHorizontalFlip, ColorJitter,
    ToDtype, Normalize])` means per image, written as a few tensor operations over the batch:
    per-image Python cost a large share of a small model's training speed on few cores
    (measured: docs/benchmarks.md). Differences from v2, all deliberate:
    - the crop is resampled bilinearly (`grid_sample`) without antialiasing: the cache holds
      images at img_size / 0.875, so a crop is shrunk by at most 1.15x, where antialiasing
      changes nothing visible;
    - the flip is folded into the crop's sampling grid, and brightness, contrast, saturation
      and the normalisation into one 3x3 colour matrix per image, applied in one pass and
      clamped once at the end (v2 clamps after each jitter);
    - the three jitters run in one random order per batch, not per image.
    With `policy="trivial"`, every image also gets one TrivialAugment-style operation
    (`imgclf.dataset.augment`): geometric ones folded into the same sampling grid, colour and
    pixel ones on the sampled crop before the jitter; `policy_magnitude` scales their ranges.
    Random draws come from torch's global CPU RNG, as with the v2 classes, so Catalyst's seed
    (and DataLoader worker seeding, where it runs in workers) applies, on any device.
    """

    # RandomResizedCrop's defaults: aspect ratios 3/4 to 4/3, 10 tries, then a centre crop.
    _RATIO = (3 / 4, 4 / 3)
    _TRIES = 10
    # On the CPU the batch is processed in chunks of about this much float output, so that the
    # intermediate tensors stay in the caches (at 224 px a whole batch is 38 MB per step).
    _CHUNK_BYTES = 2 << 20
    # ITU-R 601 luma, the weights of v2's rgb_to_grayscale (contrast and saturation use it).
    _LUMA = (0.2989, 0.587, 0.114)

    def __init__(
        self,
        *,
        img_size: int,
        scale: tuple[float, float] = (0.25, 1.0),
        hflip_prob: float = DEFAULT_HFLIP_PROB,
        color_jitter: float = 0.2,
        policy: str = "none",
        policy_magnitude: float = 1.0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.img_size = img_size
        self.policy = TrivialPolicy(policy_magnitude) if policy == "trivial" else None
        self.scale = tuple(scale)
        self.hflip_prob = hflip_prob
        self.color_jitter = color_jitter
        self.mean = tuple(mean)
        self.std = tuple(std)
        # Sample coordinates of the output pixel centres in [-1, 1] (align_corners=False).
        self._base = (torch.arange(img_size) * 2 + 1) / img_size - 1
        self._luma = torch.tensor(self._LUMA)
        # Normalised values of the pixel range [0, 1]: the clamp bounds.
        self._low = [(0 - m) / s for m, s in zip(mean, std, strict=True)]
        self._high = [(1 - m) / s for m, s in zip(mean, std, strict=True)]

    def __call__(self, images) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim == 3:
            return self(F.to_image(images).as_subclass(torch.Tensor).unsqueeze(0))[0]
        count, channels, height, width = images.shape
        # Every random draw for the batch up front, on the CPU, so results depend neither on
        # the chunking nor on the device.
        crops = self._crop_boxes(count, height, width).to(images.device)
        low, high = max(0.0, 1 - self.color_jitter), 1 + self.color_jitter
        factors = torch.empty(count, 3).uniform_(low, high).to(images.device)
        order = torch.randperm(3).tolist()
        draws = self.policy.draw(count).to(images.device) if self.policy else None
        size = self.img_size
        out = torch.empty(count, channels, size, size, device=images.device)
        out = out.contiguous(memory_format=torch.channels_last)
        per_chunk = max(1, self._CHUNK_BYTES // (channels * size * size * 4))
        if images.device.type != "cpu":
            per_chunk = count  # a GPU wants few, large kernels
        for start in range(0, count, per_chunk):
            part = slice(start, start + per_chunk)
            chunk_draws = draws[part] if draws is not None else None
            out[part] = self._augment(images[part], crops[part], factors[part], order, chunk_draws)
        return out

    def _augment(
        self,
        images: torch.Tensor,
        crops: torch.Tensor,
        factors: torch.Tensor,
        order: list[int],
        draws: PolicyDraws | None = None,
    ) -> torch.Tensor:
        """Crop, flip, (policy,) jitter and normalise a chunk of the batch (NCHW float32 out)."""
        count, channels = images.shape[:2]
        if draws is not None and self.policy.has_geometry(draws):
            grid = self._affine_grid(crops, self.policy.geometry(draws))
        else:
            grid = self._grid(crops)
        sampled = torch.nn.functional.grid_sample(
            images.to(torch.float32),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        if draws is not None:
            self.policy.apply_pixels(sampled, draws)
        matrix, offset = self._colour_maps(factors, order, sampled.mean(dim=(2, 3)))
        flat = torch.baddbmm(offset.unsqueeze(-1), matrix, sampled.view(count, channels, -1))
        for channel in range(channels):
            flat[:, channel].clamp_(self._low[channel], self._high[channel])
        return flat.view_as(sampled)

    def _crop_boxes(self, count: int, height: int, width: int) -> torch.Tensor:
        """(N, 4): x scale, x shift, y scale, y shift mapping output to input coordinates in
        [-1, 1], one random crop box each (RandomResizedCrop's sampling, vectorised over its
        tries), the x scale negated for the images drawn for a flip."""
        tries = (count, self._TRIES)
        target = height * width * torch.empty(tries).uniform_(*self.scale)
        log_ratios = [math.log(ratio) for ratio in self._RATIO]
        ratio = torch.exp(torch.empty(tries).uniform_(*log_ratios))
        crop_w = torch.sqrt(target * ratio).round()
        crop_h = torch.sqrt(target / ratio).round()
        fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
        # The first try that fits, like v2's loop; when none fits, v2's fallback: the whole
        # image, cut to the nearest allowed aspect ratio, centred.
        first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
        found = fits.any(dim=1)
        fallback_w, fallback_h = self._fallback(width, height)
        crop_w = torch.where(found, crop_w.gather(1, first)[:, 0], fallback_w)
        crop_h = torch.where(found, crop_h.gather(1, first)[:, 0], fallback_h)
        # The top-left corner: uniform over the integer positions where the box fits.
        left = torch.where(
            found,
            torch.floor(torch.rand(count) * (width - crop_w + 1)),
            torch.floor((width - crop_w) / 2),
        )
        top = torch.where(
            found,
            torch.floor(torch.rand(count) * (height - crop_h + 1)),
            torch.floor((height - crop_h) / 2),
        )
        flip = torch.rand(count) < self.hflip_prob
        x_scale = torch.where(flip, -crop_w, crop_w) / width
        return torch.stack(
            [
                x_scale,
                (2 * left + crop_w) / width - 1,
                crop_h / height,
                (2 * top + crop_h) / height - 1,
            ],
            dim=1,
        )

    def _fallback(self, width: int, height: int) -> tuple[float, float]:
        """RandomResizedCrop's box when no try fits: the image, cut to the ratio range."""
        if width / height < self._RATIO[0]:
            return width, round(width / self._RATIO[0])
        if width / height > self._RATIO[1]:
            return round(height * self._RATIO[1]), height
        return width, height

    def _grid(self, crops: torch.Tensor) -> torch.Tensor:
        """grid_sample's (N, S, S, 2) sampling grid for axis-aligned boxes: x depends on the
        column only, y on the row only (cheaper than affine_grid's matrix product)."""
        count, size = len(crops), self.img_size
        base = self._base.to(crops.device)
        x = crops[:, 0:1] * base + crops[:, 1:2]
        y = crops[:, 2:3] * base + crops[:, 3:4]
        return torch.stack(
            [x[:, None, :].expand(count, size, size), y[:, :, None].expand(count, size, size)],
            dim=-1,
        )

    def _affine_grid(self, crops: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The sampling grid of `_grid` with an affine map `theta` (N, 2, 3) applied to the
        output coordinates first (the policy's rotate, shear, translate), then the crop box.
        Written as two broadcast multiply-adds per axis: torch's affine_grid took longer than
        the grid_sample itself (96 px, one thread)."""
        count, size = len(crops), self.img_size
        base = self._base.to(crops.device)
        # box ∘ theta: x_in = x_scale · (θ00 u + θ01 v + θ02) + x_shift, likewise for y.
        rows = []
        for axis, (scale, shift) in enumerate(
            ((crops[:, 0], crops[:, 1]), (crops[:, 2], crops[:, 3]))
        ):
            along_u = (scale * theta[:, axis, 0])[:, None] * base  # (N, S) by column
            along_v = (scale * theta[:, axis, 1])[:, None] * base + (
                scale * theta[:, axis, 2] + shift
            )[:, None]  # (N, S) by row
            rows.append(along_u[:, None, :] + along_v[:, :, None])
        return torch.stack(rows, dim=-1).view(count, size, size, 2)

    def _colour_maps(
        self, factors: torch.Tensor, order: list[int], channel_means: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, the (3, 3) matrix and (3,) offset taking uint8-range RGB to the jittered,
        normalised values: the jitters are affine maps of the colour, so they compose.

        brightness f: x → f·x;  saturation f: x → f·x + (1 − f)·gray(x);
        contrast f:   x → f·x + (1 − f)·mean(gray(x)), the mean over the image, which after
        the earlier maps is gray(matrix · channel_means + offset).
        """
        count, channels = channel_means.shape
        device = channel_means.device
        identity = torch.eye(channels, device=device).expand(count, channels, channels)
        matrix = identity / 255
        offset = torch.zeros(count, channels, device=device)
        luma = self._luma.to(device)
        to_gray = luma.expand(channels, channels)  # each row: the luma weights
        for index in order:
            factor = factors[:, index, None]
            if index == 0:  # brightness
                matrix, offset = matrix * factor[..., None], offset * factor
            elif index == 1:  # contrast
                mean_gray = (matrix @ channel_means[..., None])[..., 0].add(offset) @ luma
                matrix = matrix * factor[..., None]
                offset = offset * factor + (1 - factor) * mean_gray[:, None]
            else:  # saturation
                step = identity * factor[..., None] + (1 - factor[..., None]) * to_gray
                matrix, offset = step @ matrix, (step @ offset[..., None])[..., 0]
        mean = torch.tensor(self.mean, device=device)
        std = torch.tensor(self.std, device=device)
        return matrix / std[:, None], (offset - mean) / std
