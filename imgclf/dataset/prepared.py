"""`prepare_data`: read a data root, split it, build or reuse the decoded cache.

The result, `PreparedData`, is what training needs: the class list, the parts, the split record
stored with the weights, class counts, and `dataset(part, transform)` backed by the cache.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from imgclf.dataset.cache import ImageCache, load_or_build
from imgclf.dataset.presets import resize_size_for
from imgclf.dataset.samples import Sample, read_samples
from imgclf.dataset.split import PARTS, split_record, split_samples, write_split
from imgclf.errors import InputError

# Default cache location, inside the data root: it travels with the data and two data roots
# never share (or overwrite) a cache. Hidden, so the folder reader skips it.
CACHE_FOLDER = ".cache"


class CachedImages(Dataset):
    """Items (transform(uint8 CHW tensor), class index) read from the cache's memmap, or whole
    batches (transform(uint8 NCHW tensor), class indices) through `__getitems__`.

    The memmap is opened lazily in each process: DataLoader workers re-open the file instead
    of receiving a pickled copy of the whole array.
    """

    def __init__(self, images_path: Path, rows: list[int], targets: list[int], transform=None):
        self.images_path = Path(images_path)
        self.rows = rows
        self.targets = targets
        self.transform = transform
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.__getitems__([index])
        return image[0], int(target[0])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The images at `indices` as one batch, transformed together (the presets take
        batches): one read from the cache and a few tensor operations instead of Python per
        image. DataLoader calls this for each batch (see `loaders.pass_batch`)."""
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        # Fancy indexing copies the rows out of the read-only map (torch wants writable
        # memory); NHWC → NCHW is a view, so the batch is channels-last as the model wants.
        images = torch.from_numpy(self._images[[self.rows[i] for i in indices]])
        images = images.permute(0, 3, 1, 2)
        if self.transform is not None:
            images = self.transform(images)
        return images, torch.tensor([self.targets[i] for i in indices])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None
        return state


@dataclass
class PreparedData:
    """A data root read, split and cached (see `prepare_data`).

    root:         the data root; sample paths are relative to it.
    classes:      sorted class names; a label's index in this list is its target.
    parts:        "train", "valid", "test" → samples ("test" may be empty).
    split:        the weights-file record {"root": str, "parts": {part: [[path, label], ...]}}.
    class_counts: {part: {class: count}}, every class listed in every part.
    cache:        the decoded images (rows in `rows` order).
    skipped:      [(path, reason)] for images that could not be decoded (left out of all parts).
    """

    root: Path
    classes: list[str]
    parts: dict[str, list[Sample]]
    split: dict
    class_counts: dict[str, dict[str, int]]
    cache: ImageCache
    rows: dict[str, int]  # sample path → row in the cache
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def img_side(self) -> int:
        """Side of the cached square images."""
        return self.cache.side

    def targets(self, part: str) -> list[int]:
        """Class indices of `part`'s samples, in order."""
        index = {label: i for i, label in enumerate(self.classes)}
        return [index[sample.label] for sample in self.parts[part]]

    def dataset(self, part: str, transform=None) -> CachedImages:
        """`part`'s images from the cache: items (transform(uint8 CHW tensor), class index),
        or batches through `CachedImages.__getitems__`."""
        if part not in self.parts:
            raise KeyError(f"no part {part!r}; parts are {', '.join(self.parts)}")
        rows = [self.rows[sample.path] for sample in self.parts[part]]
        return CachedImages(self.cache.images_path, rows, self.targets(part), transform)

    def write_split(self, path: str | Path) -> Path:
        """Write the split next to a run: JSON for `*.json`, else CSV `path,label,part`."""
        return write_split(path, self.split)


def prepare_data(
    root: str | Path,
    *,
    img_size: int,
    val_fraction: float = 0.15,
    seed: int = 42,
    test_fraction: float = 0.0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    resize_size: int | None = None,
    workers: int | None = None,
    classes: Sequence[str] | None = None,
    exclude_classes: Sequence[str] = (),
) -> PreparedData:
    """Read `root` (manifest or `<label>/` folders), split it, build or reuse the cache.

    Split: manifest rows with split "test" → test; the rest stratified by class and seeded into
    train / valid by `val_fraction` (and, if `test_fraction` > 0, that share of every class into
    test too); identical images (sha256) always share a part.
    Cache: images decoded once at `resize_size` (default `resize_size_for(img_size)`, the eval
    preset's resize) under `cache_dir` (default `<root>/.cache`), using `workers` processes
    (default: all cores). Images that cannot be decoded are left out with a warning.
    Classes: only `classes` (all when None), minus `exclude_classes` (data.classes and
    data.exclude_classes; e.g. to train without some classes and add them later by search).
    """
    root = Path(root)
    classes, samples = select_classes(root, *read_samples(root), classes, exclude_classes)
    parts = split_samples(
        samples, val_fraction=val_fraction, seed=seed, test_fraction=test_fraction
    )
    side = resize_size or resize_size_for(img_size)
    cache_dir = Path(cache_dir) if cache_dir is not None else root / CACHE_FOLDER
    try:
        cache = load_or_build(
            root, samples, side, cache_dir, crop=img_size, workers=workers, progress=progress
        )
    except PermissionError as error:
        raise InputError(
            f"Cannot write the image cache to {cache_dir} ({error.strerror}); "
            "set data.cache_dir to a writable folder."
        ) from error
    skipped = [(samples[index].path, reason) for index, reason in sorted(cache.failed.items())]
    if skipped:
        bad = {path for path, _ in skipped}
        parts = {part: [s for s in found if s.path not in bad] for part, found in parts.items()}
        warnings.warn(
            f"{len(skipped)} image(s) under {root} could not be decoded and are left out, "
            f"e.g. {skipped[0][1]}",
            stacklevel=2,
        )
        _check_every_class_left(root, classes, parts)
    return PreparedData(
        root=root,
        classes=classes,
        parts=parts,
        split=split_record(root, parts),
        class_counts={part: _count(classes, parts.get(part, [])) for part in PARTS},
        cache=cache,
        rows={sample.path: index for index, sample in enumerate(samples)},
        skipped=skipped,
    )


def select_classes(
    root: Path,
    classes: list[str],
    samples: list[Sample],
    keep: Sequence[str] | None,
    exclude: Sequence[str],
) -> tuple[list[str], list[Sample]]:
    """The classes in `keep` (all when None) minus `exclude`, and their samples; a name that is
    not a class of `root`, or fewer than two classes left, raises InputError."""
    for key, names in (("data.classes", keep or ()), ("data.exclude_classes", exclude)):
        unknown = [name for name in names if name not in classes]
        if unknown:
            raise InputError(
                f"{key} names {unknown[0]!r}, which is not a class of {root}; "
                f"its classes are: {', '.join(classes)}."
            )
    chosen = [c for c in classes if (keep is None or c in keep) and c not in exclude]
    if len(chosen) < 2:
        raise InputError(
            f"data.classes / data.exclude_classes leave {len(chosen)} class of {root}; "
            "a classifier needs at least two."
        )
    wanted = set(chosen)
    return chosen, [sample for sample in samples if sample.label in wanted]


def _count(classes: list[str], samples: list[Sample]) -> dict[str, int]:
    counts = Counter(sample.label for sample in samples)
    return {label: counts[label] for label in classes}


def _check_every_class_left(root: Path, classes: list[str], parts: dict[str, list[Sample]]):
    left = {sample.label for found in parts.values() for sample in found}
    for label in classes:
        if label not in left:
            raise InputError(
                f"No image of class {label!r} under {root} can be decoded; "
                "replace its files or remove the class."
            )
