"""The eval preset's fused functional steps equal torchvision's classic v2 pipeline, and the
single-image path's copy of them equals the eval preset exactly."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from imgclf.imaging import open_rgb
from imgclf.model.preprocessing import EvalPreset, Preprocessing
from imgclf.model.single_image import SingleImageInput
from tests.conftest import DEMO_DATA


@pytest.mark.parametrize(
    ("img_size", "size"), [(224, (100, 100)), (64, (640, 480)), (32, (37, 90))]
)
def test_eval_preset_equals_the_v2_compose_pipeline(img_size, size):
    photo = open_rgb(sorted((DEMO_DATA / "7").glob("*.jpg"))[0]).resize(size)
    preset = EvalPreset(Preprocessing.for_img_size(img_size))
    reference = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(preset.preprocessing.resize_size, antialias=True),
            v2.CenterCrop(img_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(preset.preprocessing.mean, preset.preprocessing.std),
        ]
    )
    for image in (photo, v2.functional.pil_to_tensor(photo)):
        ours, expected = preset(image), reference(image)
        assert ours.shape == expected.shape == (3, img_size, img_size)
        assert ours.dtype == torch.float32
        assert (ours - expected).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("img_size", "size"), [(224, (100, 100)), (64, (640, 480)), (32, (37, 90))]
)
def test_single_image_input_equals_the_eval_preset_exactly(img_size, size):
    photo = open_rgb(sorted((DEMO_DATA / "2").glob("*.jpg"))[0]).resize(size)
    preset = EvalPreset(Preprocessing.for_img_size(img_size))
    single = SingleImageInput(preset)
    pixels = v2.functional.pil_to_tensor(photo)
    batch = single(pixels)
    assert batch.shape == (1, 3, img_size, img_size)
    assert batch.is_contiguous()  # what ONNX Runtime reads, no copy on the way
    assert torch.equal(batch[0], preset(photo))
    assert single(pixels) is batch  # the buffer is reused, not reallocated


@pytest.mark.parametrize("img_size", [224, 64, 32])
def test_the_batch_path_equals_the_per_image_preset_exactly(img_size):
    """EvalPreset.batch (images of one size resized together) is bit for bit the stack of the
    per-image preset, for mixed sizes, layouts and more images of one size than one group."""
    photos = [open_rgb(path) for path in sorted((DEMO_DATA / "4").glob("*.jpg"))[:40]]
    pixels = [v2.functional.pil_to_tensor(photo) for photo in photos]  # (H, W, 3) in memory
    pixels += [
        v2.functional.pil_to_tensor(photos[0].resize((37, 90))),
        pixels[1].contiguous(),  # (3, H, W) in memory
        v2.functional.pil_to_tensor(photos[2].resize((640, 480))),
        v2.functional.pil_to_tensor(photos[3].resize((37, 90))),
    ]
    preset = EvalPreset(Preprocessing.for_img_size(img_size))
    expected = torch.stack([preset(image) for image in pixels])
    assert len(pixels) - 4 > EvalPreset._GROUP
    assert torch.equal(preset.batch(pixels), expected)
    out = torch.full_like(expected, float("nan"))
    assert preset.batch(pixels, out=out) is out
    assert torch.equal(out, expected)
