"""The demo's URL list: stratified, seeded, deterministic, and its broken URLs truly broken."""

from __future__ import annotations

import csv
import io
from collections import Counter

import pytest
from PIL import Image, UnidentifiedImageError

from imgclf.demo.urls import (
    broken_rows,
    broken_samples,
    list_images,
    render_url_list,
    stratified_rows,
    write_url_list,
)
from imgclf.errors import InputError
from imgclf.imaging import open_rgb
from tests.conftest import DEMO_DATA, make_image_folder


def test_list_images_reads_the_bundled_data_and_skips_licence_files():
    images = list_images(DEMO_DATA)
    assert list(images) == [str(digit) for digit in range(10)]
    assert sum(len(files) for files in images.values()) == 2062
    assert all(files == sorted(files) for files in images.values())
    assert all(path.suffix == ".jpg" for files in images.values() for path in files)


def test_list_images_ignores_non_images_and_empty_folders(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=3)
    (root / "circle" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    images = list_images(root)
    assert sorted(images) == ["circle", "square", "triangle"]
    assert all(len(files) == 3 for files in images.values())


@pytest.mark.parametrize("setup", ["missing", "one_class"])
def test_list_images_rejects_unusable_folders(tmp_path, setup):
    root = tmp_path / "images"
    if setup == "one_class":
        make_image_folder(root, per_class=2)
        for label in ("square", "triangle"):
            for file in (root / label).iterdir():
                file.unlink()
    with pytest.raises(InputError, match=str(root)):
        list_images(root)


def test_split_is_stratified_15_percent_per_class():
    images = list_images(DEMO_DATA)
    rows = stratified_rows(images, DEMO_DATA, test_fraction=0.15, seed=0)
    assert len(rows) == 2062
    assert len({row.path for row in rows}) == 2062
    test_per_class = Counter(row.label for row in rows if row.split == "test")
    for label, files in images.items():
        # 15% of 204..208 images is 30.6..31.2, rounded per class.
        assert test_per_class[label] == round(0.15 * len(files)) == 31
    assert {row.split for row in rows} == {"train", "test"}


def test_split_is_deterministic_and_depends_on_the_seed():
    images = list_images(DEMO_DATA)
    first = stratified_rows(images, DEMO_DATA, test_fraction=0.15, seed=0)
    again = stratified_rows(list_images(DEMO_DATA), DEMO_DATA, test_fraction=0.15, seed=0)
    other = stratified_rows(images, DEMO_DATA, test_fraction=0.15, seed=1)
    assert first == again
    test_paths = {row.path for row in first if row.split == "test"}
    assert test_paths != {row.path for row in other if row.split == "test"}


def test_per_class_sample_keeps_one_test_and_one_train_image_per_class(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=12)
    rows = stratified_rows(list_images(root), root, test_fraction=0.15, seed=3, per_class=4)
    counts = Counter((row.label, row.split) for row in rows)
    # 15% of 4 rounds to 1: one test image, three train images in each class.
    assert counts == {
        (label, split): n
        for label in ("circle", "square", "triangle")
        for split, n in (("test", 1), ("train", 3))
    }
    assert rows == stratified_rows(
        list_images(root), root, test_fraction=0.15, seed=3, per_class=4
    )


@pytest.mark.parametrize(("fraction", "per_class"), [(0.0, None), (1.0, None), (0.2, 1)])
def test_bad_split_options_are_input_errors(tmp_path, fraction, per_class):
    root = make_image_folder(tmp_path / "images", per_class=3)
    with pytest.raises(InputError):
        stratified_rows(
            list_images(root), root, test_fraction=fraction, seed=0, per_class=per_class
        )


def test_url_list_is_a_csv_with_quoted_paths(tmp_path):
    root = tmp_path / "images"
    for label in ("a b", "c"):
        (root / label).mkdir(parents=True)
        for name in ("x 1.jpg", "y.png"):
            Image.new("RGB", (8, 8)).save(root / label / name)
    rows = stratified_rows(list_images(root), root, test_fraction=0.5, seed=0)
    out = write_url_list(tmp_path / "urls" / "urls.csv", rows, "http://127.0.0.1:9/")
    lines = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [line["url"] for line in lines] == [
        "http://127.0.0.1:9/a%20b/x%201.jpg",
        "http://127.0.0.1:9/a%20b/y.png",
        "http://127.0.0.1:9/c/x%201.jpg",
        "http://127.0.0.1:9/c/y.png",
    ]
    assert [line["label"] for line in lines] == ["a b", "a b", "c", "c"]
    assert Counter(line["split"] for line in lines) == {"train": 2, "test": 2}
    assert out.read_text() == render_url_list(rows, "http://127.0.0.1:9")


def test_broken_samples_fail_to_decode():
    jpeg = next(DEMO_DATA.glob("0/*.jpg"))
    samples = {sample.expected_reason: sample for sample in broken_samples(jpeg)}
    assert set(samples) == {"http_404", "not_image", "corrupt"}
    assert samples["http_404"].body is None
    with pytest.raises(UnidentifiedImageError):
        open_rgb(samples["not_image"].body)
    with pytest.raises(OSError, match="truncated"):
        open_rgb(samples["corrupt"].body)
    # The truncated file still starts like a JPEG, so only a full decode catches it.
    assert samples["corrupt"].body[:3] == b"\xff\xd8\xff"
    rows = broken_rows(list(samples.values()), label="0")
    assert {(row.label, row.split) for row in rows} == {("0", "train")}
    assert all(row.path.startswith("/broken/") for row in rows)


def test_demo_data_keeps_its_licence():
    # Apache-2.0 requires the licence and the notice to travel with every copy of the images.
    assert "Apache License" in (DEMO_DATA / "LICENSE").read_text()
    assert "Apache License 2.0" in (DEMO_DATA / "NOTICE").read_text()
