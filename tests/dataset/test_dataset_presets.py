"""TrainPreset: the functional rewrite keeps the v2 steps' meaning."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2

from imgclf.dataset.presets import IMAGENET_MEAN, IMAGENET_STD, TrainPreset


def image(side: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=generator)


def normalised(values: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (values - mean.view(3, 1, 1)) / std.view(3, 1, 1)


def test_without_randomness_it_is_resize_scale_normalise():
    preset = TrainPreset(img_size=24, scale=(1.0, 1.0), hflip_prob=0.0, color_jitter=0.0)
    reference = v2.Compose(
        [
            v2.Resize((24, 24), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    torch.manual_seed(0)
    torch.testing.assert_close(preset(image()), reference(image()))


def test_flip_mirrors_the_same_crop():
    kept = TrainPreset(img_size=24, hflip_prob=0.0, color_jitter=0.0)
    flipped = TrainPreset(img_size=24, hflip_prob=1.0, color_jitter=0.0)
    torch.manual_seed(3)
    first = kept(image())
    torch.manual_seed(3)
    second = flipped(image())
    torch.testing.assert_close(second, first.flip(-1))


def test_seeded_and_varied():
    preset = TrainPreset(img_size=24)
    torch.manual_seed(5)
    first = preset(image())
    torch.manual_seed(5)
    assert torch.equal(preset(image()), first)
    assert not torch.equal(preset(image()), first)


def test_outputs_stay_in_the_normalised_pixel_range_for_tensors_and_pil_images():
    preset = TrainPreset(img_size=32, color_jitter=0.9)
    low, high = normalised(torch.zeros(3, 1, 1)), normalised(torch.ones(3, 1, 1))
    pil = Image.new("RGB", (50, 70), (250, 10, 10))
    for source in (image(), pil):
        for _ in range(20):
            out = preset(source)
            assert out.shape == (3, 32, 32) and out.dtype == torch.float32
            assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
