"""TrainPreset: batched augmentation that keeps the meaning of torchvision's v2 steps."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from imgclf.dataset.presets import IMAGENET_MEAN, IMAGENET_STD, TrainPreset


def image(side: int = 40, low: int = 0, high: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(low, high, (3, side, side), dtype=torch.uint8, generator=generator)


def batch(count: int = 8, side: int = 40, low: int = 0, high: int = 256) -> torch.Tensor:
    """A uint8 NCHW batch laid out as the cache hands it out (NHWC memory)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(
        low, high, (count, side, side, 3), dtype=torch.uint8, generator=generator
    )
    return images.permute(0, 3, 1, 2)


def normalised(values: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (values - mean.view(3, 1, 1)) / std.view(3, 1, 1)


def test_without_randomness_it_is_bilinear_resize_scale_normalise():
    preset = TrainPreset(img_size=24, scale=(1.0, 1.0), hflip_prob=0.0, color_jitter=0.0)
    source = image()
    resized = torch.nn.functional.interpolate(
        source[None].float() / 255, size=(24, 24), mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(preset(source), normalised(resized), atol=5e-5, rtol=1e-5)


def test_crop_boxes_follow_random_resized_crop():
    preset = TrainPreset(img_size=24, scale=(0.3, 0.9), hflip_prob=0.0)
    torch.manual_seed(0)
    x_scale, x_shift, y_scale, y_shift = preset._crop_boxes(2000, 60, 80).unbind(dim=1)
    # Back from [-1, 1] to pixels: width, height, left, top of each box in an 80 x 60 image.
    width, height = x_scale * 80, y_scale * 60
    left, top = (x_shift + 1) * 80 / 2 - width / 2, (y_shift + 1) * 60 / 2 - height / 2
    assert (left >= -1e-4).all() and (left + width <= 80 + 1e-3).all()
    assert (top >= -1e-4).all() and (top + height <= 60 + 1e-3).all()
    for side in (width, height, left, top):
        torch.testing.assert_close(side, side.round(), atol=1e-3, rtol=0)
    area = width * height / (80 * 60)
    # Rounding the sides to whole pixels moves the area a little past the drawn fraction.
    assert area.min() > 0.3 * 0.95 and area.max() < 0.9 * 1.05
    ratio = width / height
    assert ratio.min() > 3 / 4 * 0.95 and ratio.max() < 4 / 3 * 1.05
    # Boxes vary in size and place, and reach the image borders.
    assert area.std() > 0.1 and left.min() < 1 and (left + width).max() > 79


def test_no_box_fits_gives_the_centred_box_of_the_nearest_ratio():
    preset = TrainPreset(img_size=8, scale=(1.0, 1.0), hflip_prob=0.0)
    x_scale, x_shift, y_scale, y_shift = preset._crop_boxes(4, 30, 90)[0].tolist()
    width, height = x_scale * 90, y_scale * 30
    assert (round(width), round(height)) == (40, 30)
    assert math.isclose(x_shift, 0.0, abs_tol=1e-6) and math.isclose(y_shift, 0.0, abs_tol=1e-6)


def test_flip_mirrors_the_same_crop():
    kept = TrainPreset(img_size=24, hflip_prob=0.0, color_jitter=0.0)
    flipped = TrainPreset(img_size=24, hflip_prob=1.0, color_jitter=0.0)
    torch.manual_seed(3)
    first = kept(batch())
    torch.manual_seed(3)
    second = flipped(batch())
    torch.testing.assert_close(second, first.flip(-1), atol=5e-5, rtol=1e-5)


def test_jitter_is_v2s_brightness_contrast_saturation_in_the_drawn_order():
    preset = TrainPreset(img_size=40, scale=(1.0, 1.0), hflip_prob=0.0, color_jitter=0.3)
    # Mid-range pixels and small factors: no value leaves [0, 1], so v2's clamps after each
    # step and ours at the end agree.
    images = batch(count=4, low=90, high=160)
    crops = preset._crop_boxes(4, 40, 40)
    factors = torch.tensor([[0.8, 1.2, 0.9], [1.1, 0.75, 1.25], [1.0, 1.0, 1.0], [1.2, 1.1, 0.8]])
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        out = preset._augment(images, crops, factors, order)
        for index in range(4):
            expected = images[index].float() / 255  # the identity crop at the same size
            for step in order:
                expected = adjust[step](expected, factors[index, step].item())
            torch.testing.assert_close(out[index], normalised(expected), atol=1e-4, rtol=1e-4)


def test_a_batch_is_channels_last_and_each_image_drawn_apart():
    preset = TrainPreset(img_size=24)
    torch.manual_seed(1)
    out = preset(batch(count=16).expand(16, 3, 40, 40))  # the same picture sixteen times
    assert out.shape == (16, 3, 24, 24) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert len({tuple(row.tolist()) for row in out.flatten(1)[:, :50]}) == 16


def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch):
    preset = TrainPreset(img_size=24)
    torch.manual_seed(7)
    whole = preset(batch(count=12))
    monkeypatch.setattr(TrainPreset, "_CHUNK_BYTES", 1)  # one image per chunk
    torch.manual_seed(7)
    torch.testing.assert_close(preset(batch(count=12)), whole)


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
