"""The weights file: the shipped weights/*.pth still load, and the on-disk format is unchanged
(the four preprocessing values as top-level keys, which the shipped files were written with)."""

from __future__ import annotations

import pytest
import torch

from imgclf.model.predictor import load_predictor
from imgclf.model.preprocessing import Preprocessing
from imgclf.model.weights import load_weights, save_weights
from tests.conftest import DEMO_DATA, ROOT

SHIPPED = sorted((ROOT / "weights").glob("*.pth"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_weights_load_and_classify_a_demo_photo(path):
    weights = load_weights(path)
    assert weights.classes == [str(digit) for digit in range(10)]
    assert weights.path == path
    size = weights.preprocessing.img_size
    assert weights.preprocessing == Preprocessing.for_img_size(size)
    predictor = load_predictor(weights)
    assert predictor.source == str(path)
    photo = sorted((DEMO_DATA / "7").glob("*.jpg"))[0]
    probabilities = predictor.classify(photo)
    assert probabilities.shape == (10,) and abs(probabilities.sum() - 1) < 1e-6


def test_saved_file_keeps_the_flat_format(fitted_weights, tmp_path):
    weights = load_weights(fitted_weights)
    copy = save_weights(tmp_path / "copy.pth", weights)
    payload = torch.load(copy, map_location="cpu", weights_only=True)
    assert {"img_size": 32, "resize_size": 37}.items() <= payload.items()
    assert payload["mean"] == [0.485, 0.456, 0.406] and payload["std"] == [0.229, 0.224, 0.225]
    assert "preprocessing" not in payload and "path" not in payload
    again = load_weights(copy)
    for name in ("arch", "classes", "preprocessing", "split", "class_counts", "created"):
        assert getattr(again, name) == getattr(weights, name), name
    assert again.path == copy
