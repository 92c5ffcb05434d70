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
