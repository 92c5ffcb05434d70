"""prepare_data's result and the Catalyst loaders: shapes, labels, order, balance."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from imgclf.dataset import build_loaders, prepare_data, read_split
from imgclf.dataset.presets import TrainPreset
from imgclf.errors import InputError
from imgclf.model.preprocessing import EvalPreset, Preprocessing
from tests.conftest import TINY_CLASSES, make_image_folder
from tests.dataset.helpers import manifest_rows_for_folder, write_manifest


def test_prepared_data_describes_the_split(tiny_image_folder: Path, tmp_path: Path):
    write_manifest(tiny_image_folder, manifest_rows_for_folder(tiny_image_folder, test_every=6))

    data = prepare_data(tiny_image_folder, img_size=32, val_fraction=0.3, progress=False)

    assert data.classes == sorted(TINY_CLASSES)
    assert data.class_counts == {
        "train": {"circle": 7, "square": 7, "triangle": 7},
        "valid": {"circle": 3, "square": 3, "triangle": 3},
        "test": {"circle": 2, "square": 2, "triangle": 2},
    }
    assert data.split["root"] == str(tiny_image_folder)
    for part, samples in data.parts.items():
        assert data.split["parts"][part] == [[s.path, s.label] for s in samples]
    written = data.write_split(tmp_path / "logs" / "split.csv")
    assert read_split(written, root=tiny_image_folder) == data.split


def test_dataset_items_are_float_tensors_with_class_indices(tiny_image_folder: Path):
    data = prepare_data(tiny_image_folder, img_size=32, progress=False)
    dataset = data.dataset("valid", EvalPreset(Preprocessing.for_img_size(32)))

    assert len(dataset) == len(data.parts["valid"])
    for index, sample in enumerate(data.parts["valid"]):
        image, target = dataset[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert data.classes[target] == sample.label
    raw, _ = data.dataset("train")[0]
    assert raw.shape == (3, 37, 37) and raw.dtype == torch.uint8
    with pytest.raises(KeyError, match="no part 'holdout'"):
        data.dataset("holdout")


def loaders_32px(data, num_workers: int):
    return build_loaders(
        data,
        batch_size=8,
        num_workers=num_workers,
        train_transform=TrainPreset(img_size=32),
        eval_transform=EvalPreset(Preprocessing.for_img_size(32)),
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loaders_yield_batches_of_the_right_shapes_and_labels(
    tiny_image_folder: Path, num_workers: int
):
    data = prepare_data(tiny_image_folder, img_size=32, val_fraction=0.25, progress=False)

    loaders = loaders_32px(data, num_workers)

    assert list(loaders) == ["train", "valid"]
    # With workers, the loader's seed fixes the augmentation; without, the global RNG does
    # (Catalyst seeds it at the start of every stage).
    torch.manual_seed(0)
    train = list(loaders["train"])
    assert [len(targets) for _, targets in train] == [8, 8, 8]  # 27 images, remainder dropped
    assert all(images.shape == (8, 3, 32, 32) for images, _ in train)
    valid_targets = torch.cat([targets for _, targets in loaders["valid"]])
    assert valid_targets.tolist() == data.targets("valid")  # in order, nothing dropped
    # Seeded: the same seed shuffles and augments the same way.
    torch.manual_seed(0)
    first_images, first_targets = next(iter(loaders_32px(data, num_workers)["train"]))
    assert torch.equal(first_targets, train[0][1]) and torch.equal(first_images, train[0][0])


def test_balanced_sampler_evens_out_an_imbalanced_train_part(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", per_class=4, size=16)
    make_image_folder(tmp_path / "more", per_class=36, size=16)
    for path in (tmp_path / "more" / "circle").iterdir():
        path.rename(root / "circle" / f"more-{path.name}")
    data = prepare_data(root, img_size=16, val_fraction=0.2, progress=False)
    assert data.class_counts["train"] == {"circle": 32, "square": 3, "triangle": 3}

    drawn: Counter = Counter()
    for seed in range(30):
        loaders = build_loaders(
            data,
            batch_size=38,
            num_workers=0,
            train_transform=None,
            eval_transform=None,
            balanced=True,
            seed=seed,
        )
        for _, targets in loaders["train"]:
            drawn.update(data.classes[t] for t in targets.tolist())

    assert sum(drawn.values()) == 30 * 38
    # Each class is drawn with probability 1/3; unbalanced, circle would take 84% of draws.
    assert all(0.27 < drawn[label] / (30 * 38) < 0.40 for label in data.classes), drawn


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_cache_folder_is_an_input_error(tiny_image_folder: Path, tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match=r"Cannot write the image cache to .*locked"):
            prepare_data(tiny_image_folder, img_size=32, cache_dir=locked / "c", progress=False)
    finally:
        locked.chmod(0o700)


def worker_niceness(images: torch.Tensor) -> torch.Tensor:
    """A stand-in transform: each image of the batch becomes the niceness of its process."""
    return torch.full((len(images),), os.nice(0))


def test_workers_run_at_low_priority(tiny_image_folder: Path):
    data = prepare_data(tiny_image_folder, img_size=32, progress=False)
    loaders = build_loaders(
        data,
        batch_size=4,
        num_workers=1,
        train_transform=None,
        eval_transform=worker_niceness,
    )
    seen = torch.cat([values for values, _ in loaders["valid"]])
    assert seen.tolist() == [min(19, os.nice(0) + 19)] * len(data.parts["valid"])


def test_min_epoch_images_repeats_a_small_train_part_in_new_orders(tiny_image_folder: Path):
    data = prepare_data(tiny_image_folder, img_size=16, val_fraction=0.25, progress=False)
    n_train = len(data.parts["train"])  # 27 of the 36 images
    loaders = build_loaders(data, batch_size=9, num_workers=0, min_epoch_images=100)
    targets = torch.cat([targets for _, targets in loaders["train"]])
    # 100 draws, the remainder of the last batch dropped: 11 batches of 9; every image is
    # drawn 3 or 4 times (3 full passes of 27 in new orders, then 19 more).
    assert len(loaders["train"]) == 11 and len(targets) == 99
    counts = Counter(targets.tolist())
    per_class = Counter(sample.label for sample in data.parts["train"])
    for index, label in enumerate(data.classes):
        assert 3 * per_class[label] <= counts[index] <= 4 * per_class[label]
    # A train part as large as the minimum, or larger, is left as it is.
    plain = build_loaders(data, batch_size=9, num_workers=0, min_epoch_images=n_train)
    assert len(plain["train"]) == n_train // 9
