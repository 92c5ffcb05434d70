"""data.classes / data.exclude_classes: train on a subset of a folder's classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.dataset import prepare_data
from imgclf.errors import InputError
from imgclf.train.settings import DataSettings


def test_excluded_classes_leave_the_classes_and_every_part(tiny_image_folder: Path):
    data = prepare_data(tiny_image_folder, img_size=32, progress=False, exclude_classes=["square"])
    assert data.classes == ["circle", "triangle"]
    for samples in data.parts.values():
        assert {s.label for s in samples} <= {"circle", "triangle"}
    assert sum(len(s) for s in data.parts.values()) == 24
    kept = prepare_data(
        tiny_image_folder, img_size=32, progress=False, classes=["square", "circle"]
    )
    assert kept.classes == ["circle", "square"]


def test_unknown_or_too_few_classes_are_refused_with_the_class_list(tiny_image_folder: Path):
    with pytest.raises(InputError, match=r"data.exclude_classes names 'dog'.*circle, square"):
        prepare_data(tiny_image_folder, img_size=32, progress=False, exclude_classes=["dog"])
    with pytest.raises(InputError, match="leave 1 class"):
        prepare_data(tiny_image_folder, img_size=32, progress=False, classes=["circle"])


def test_settings_read_class_names_as_strings():
    settings = DataSettings.from_config({"data": {"root": "d", "exclude_classes": [8, "9"]}})
    assert settings.exclude_classes == ("8", "9") and settings.classes is None
    with pytest.raises(InputError, match="give a list of class names"):
        DataSettings.from_config({"data": {"root": "d", "classes": "8"}})
