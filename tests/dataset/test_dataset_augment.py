"""The TrivialAugment-style batch policy: each operation against a value computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from imgclf.dataset.augment import OPERATIONS, PolicyDraws, TrivialPolicy
from imgclf.dataset.presets import TrainPreset


def draws(op: str, magnitude: float, sign: float = 1.0, count: int = 1) -> PolicyDraws:
    """The same operation, magnitude and sign for `count` images."""
    return PolicyDraws(
        ops=torch.full((count,), OPERATIONS.index(op)),
        magnitudes=torch.full((count,), magnitude),
        signs=torch.full((count,), sign),
    )


def test_pixel_operations_by_hand():
    policy = TrivialPolicy()
    image = torch.tensor([[[[10.0, 100.0], [200.0, 250.0]]]]).expand(1, 3, 2, 2).clone()
    # brightness, magnitude 0.5, sign +1: factor 1 + 0.5 * 0.9 = 1.45, then clamped to 255.
    out = policy.apply_pixels(image.clone(), draws("brightness", 0.5))
    assert out[0, 0].flatten().tolist() == pytest.approx([14.5, 145.0, 255.0, 255.0])
    # solarize, magnitude 0.25: threshold 191.25; 200 -> 55, 250 -> 5, the rest unchanged.
    out = policy.apply_pixels(image.clone(), draws("solarize", 0.25))
    assert out[0, 0].flatten().tolist() == pytest.approx([10.0, 100.0, 55.0, 5.0])
    # posterize, magnitude 0.5: round(4 * 0.5) = 2 bits dropped: multiples of 4 below.
    out = policy.apply_pixels(image.clone(), draws("posterize", 0.5))
    assert out[0, 0].flatten().tolist() == pytest.approx([8.0, 100.0, 200.0, 248.0])
    # autocontrast: 10..250 stretched to 0..255.
    out = policy.apply_pixels(image.clone(), draws("autocontrast", 0.3))
    expected = [(v - 10) * 255 / 240 for v in (10.0, 100.0, 200.0, 250.0)]
    assert out[0, 0].flatten().tolist() == pytest.approx(expected, rel=1e-5)
    # color on a grey image changes nothing; contrast 0 factor ... magnitude 1, sign -1:
    # factor 0.1, each value moves 90% of the way to the mean grey (140).
    out = policy.apply_pixels(image.clone(), draws("contrast", 1.0, sign=-1.0))
    mean = 140.0 * sum((0.2989, 0.587, 0.114))
    expected = [mean + 0.1 * (v - mean) for v in (10.0, 100.0, 200.0, 250.0)]
    assert out[0, 0].flatten().tolist() == pytest.approx(expected, rel=1e-4)
    assert torch.equal(policy.apply_pixels(image.clone(), draws("identity", 1.0)), image)


def test_geometry_maps_by_hand():
    policy = TrivialPolicy()
    theta = policy.geometry(draws("rotate", 0.5, sign=-1.0))[0]
    angle = -math.radians(15)
    expected = [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0]]
    assert torch.allclose(theta, torch.tensor(expected), atol=1e-6)
    theta = policy.geometry(draws("translate_y", 1.0))[0]  # 45% of the side = 0.9
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1, 0.9]]))
    theta = policy.geometry(draws("shear_x", 1.0))[0]
    assert torch.allclose(theta, torch.tensor([[1.0, 0.3, 0], [0, 1, 0]]))
    assert policy.geometry(draws("solarize", 1.0))[0].tolist() == [[1, 0, 0], [0, 1, 0]]


def test_identity_draws_give_the_plain_preset_and_translation_moves_pixels():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    plain = TrainPreset(img_size=16)
    with_policy = TrainPreset(img_size=16, policy="trivial")
    crops = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 4)  # the whole image, no flip
    factors = torch.ones(4, 3)  # no jitter
    expected = plain._augment(images, crops, factors, [0, 1, 2])
    same = with_policy._augment(images, crops, factors, [0, 1, 2], draws("identity", 1.0, count=4))
    assert torch.allclose(same, expected, atol=1e-6)
    # A shift of 4 pixels of 16 is 0.5 in [-1, 1] coordinates = 2 * 0.45 * magnitude.
    shifted = draws("translate_x", 0.5 / 0.9, count=4)
    moved = with_policy._augment(images, crops, factors, [0, 1, 2], shifted)
    assert torch.allclose(moved[..., :12], expected[..., 4:], atol=1e-4)


def test_policy_batch_is_seeded_and_finite():
    images = torch.randint(0, 256, (32, 3, 40, 40), dtype=torch.uint8)
    preset = TrainPreset(img_size=32, policy="trivial")
    torch.manual_seed(3)
    first = preset(images)
    torch.manual_seed(3)
    assert torch.equal(preset(images), first)
    assert first.shape == (32, 3, 32, 32) and torch.isfinite(first).all()
    with pytest.raises(ValueError, match="policy"):
        TrainPreset(img_size=32, policy="auto")
