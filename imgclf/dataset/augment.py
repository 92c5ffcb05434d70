"""TrivialAugment-style operations for whole batches (`data.augment.policy: trivial`).

TrivialAugment (Müller & Hutter, 2021) applies to every image one operation drawn uniformly
from a fixed list, at a magnitude drawn uniformly: no search, no tuning, and about the gains of
searched policies. Per image, torchvision's `TrivialAugmentWide` costs Python and PIL time per
image; here the draws are made for the whole batch at once and applied as a few tensor
operations:
- the geometric operations (rotate, shear, translate) become one 2x3 affine map per image,
  composed with the random resized crop and flip into TrainPreset's one sampling grid, so the
  image is still resampled once;
- the colour and pixel operations run on the sampled float batch (values 0-255) before the
  colour jitter, one masked tensor operation per kind over the images that drew it.
Ranges are torchvision's RandAugment maxima (rotate 30°, shear 0.3, translate 45% of the side,
enhance factors 1 ± 0.9, posterize to 4-8 bits, any solarize threshold), i.e. TrivialAugment's
original (not "wide") ranges, scaled by `magnitude`. Equalize is left out: a per-image
histogram has no cheap batched form, and autocontrast covers much of what it does here.
Geometric fills replicate the border (the crop's grid_sample setting) instead of black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

OPERATIONS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
)
GEOMETRIC = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate"})
_MAX = {"shear": 0.3, "translate": 0.45, "rotate": 30.0, "enhance": 0.9}
# ITU-R 601 luma, as in TrainPreset and PIL's "L" conversion.
_LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class PolicyDraws:
    """One batch's draws: the operation index, magnitude in [0, 1] and sign of every image."""

    ops: torch.Tensor  # (N,) int64, indices into OPERATIONS
    magnitudes: torch.Tensor  # (N,) float
    signs: torch.Tensor  # (N,) float, -1 or 1

    def __getitem__(self, part: slice) -> PolicyDraws:
        return PolicyDraws(self.ops[part], self.magnitudes[part], self.signs[part])

    def to(self, device: torch.device) -> PolicyDraws:
        """The draws on `device`."""
        return PolicyDraws(self.ops.to(device), self.magnitudes.to(device), self.signs.to(device))


class TrivialPolicy:
    """Draws and applies one operation per image (see the module docstring)."""

    def __init__(self, magnitude: float = 1.0) -> None:
        self.magnitude = float(magnitude)
        self._luma = torch.tensor(_LUMA)
        self._index = {name: index for index, name in enumerate(OPERATIONS)}

    def draw(self, count: int) -> PolicyDraws:
        """Every random draw of a batch, from torch's global CPU generator (seeded by Catalyst)."""
        return PolicyDraws(
            ops=torch.randint(len(OPERATIONS), (count,)),
            magnitudes=torch.rand(count) * self.magnitude,
            signs=torch.where(torch.rand(count) < 0.5, -1.0, 1.0),
        )

    def geometry(self, draws: PolicyDraws) -> torch.Tensor:
        """(N, 2, 3) affine maps from output to pre-operation coordinates in [-1, 1]: identity
        for the images that drew no geometric operation."""
        count = len(draws.ops)
        theta = torch.zeros(count, 2, 3, device=draws.ops.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        signed = draws.magnitudes * draws.signs

        def where(name: str) -> torch.Tensor:
            return draws.ops == self._index[name]

        shear = signed * _MAX["shear"]
        theta[:, 0, 1] = torch.where(where("shear_x"), shear, theta[:, 0, 1])
        theta[:, 1, 0] = torch.where(where("shear_y"), shear, theta[:, 1, 0])
        # A shift by a fraction f of the side is 2f in [-1, 1] coordinates.
        shift = 2 * signed * _MAX["translate"]
        theta[:, 0, 2] = torch.where(where("translate_x"), shift, theta[:, 0, 2])
        theta[:, 1, 2] = torch.where(where("translate_y"), shift, theta[:, 1, 2])
        angle = signed * math.radians(_MAX["rotate"])
        rotate = where("rotate")
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta[:, 0, 0] = torch.where(rotate, cos, theta[:, 0, 0])
        theta[:, 0, 1] = torch.where(rotate, -sin, theta[:, 0, 1])
        theta[:, 1, 0] = torch.where(rotate, sin, theta[:, 1, 0])
        theta[:, 1, 1] = torch.where(rotate, cos, theta[:, 1, 1])
        return theta

    def has_geometry(self, draws: PolicyDraws) -> bool:
        """Whether any image of `draws` drew a geometric operation."""
        geometric = [self._index[name] for name in GEOMETRIC]
        return bool(torch.isin(draws.ops, torch.tensor(geometric, device=draws.ops.device)).any())

    @torch.no_grad()
    def apply_pixels(self, images: torch.Tensor, draws: PolicyDraws) -> torch.Tensor:
        """Apply the colour and pixel operations in place to a float NCHW batch of values in
        [0, 255] (the sampled crops); returns `images`."""
        factors = 1 + draws.signs * draws.magnitudes * _MAX["enhance"]
        luma = self._luma.to(images.device).view(1, -1, 1, 1)
        for name in ("brightness", "color", "contrast", "sharpness", "posterize", "solarize"):
            chosen = (draws.ops == self._index[name]).nonzero()[:, 0]
            if len(chosen) == 0:
                continue
            part = images[chosen]
            factor = factors[chosen].view(-1, 1, 1, 1)
            if name == "brightness":
                part = part * factor
            elif name == "color":  # PIL ImageEnhance.Color: blend with the grey image
                gray = (part * luma).sum(dim=1, keepdim=True)
                part = torch.lerp(gray, part, factor)
            elif name == "contrast":  # blend with the image's mean grey level
                gray = (part * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
                part = torch.lerp(gray, part, factor)
            elif name == "sharpness":
                part = torch.lerp(_smoothed(part), part, factor)
            elif name == "posterize":  # keep the top 8 - 4m bits
                step = (2.0 ** torch.round(4 * draws.magnitudes[chosen])).view(-1, 1, 1, 1)
                part = torch.floor(part.clamp(0, 255) / step) * step
            else:  # solarize: invert the pixels at or above a threshold from 255 down to 0
                threshold = (255 * (1 - draws.magnitudes[chosen])).view(-1, 1, 1, 1)
                part = torch.where(part >= threshold, 255 - part, part)
            images[chosen] = part.clamp(0, 255)
        chosen = (draws.ops == self._index["autocontrast"]).nonzero()[:, 0]
        if len(chosen):  # stretch every channel of every image to the full range
            part = images[chosen]
            low = part.amin(dim=(2, 3), keepdim=True)
            high = part.amax(dim=(2, 3), keepdim=True)
            scale = torch.where(high > low, 255 / (high - low).clamp(min=1e-6), 1.0)
            images[chosen] = ((part - low) * scale).clamp(0, 255)
        return images


def _smoothed(images: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, the rest 1, /13) per channel, borders unchanged:
    the degenerate image of ImageEnhance.Sharpness. As (9 · 3x3 mean + 4 · centre) / 13: a
    pooling is several times faster than a grouped convolution on the CPU."""
    mean = torch.nn.functional.avg_pool2d(images, 3, stride=1)
    out = images.clone()
    out[:, :, 1:-1, 1:-1] = (9 * mean + 4 * images[:, :, 1:-1, 1:-1]) / 13
    return out
