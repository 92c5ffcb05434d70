"""The dataset stage: read a data root, split it, cache decoded images, build DataLoaders.

    from imgclf.dataset import prepare_data, build_loaders
    data = prepare_data("data/images", img_size=96)
    loaders = build_loaders(data, batch_size=64, num_workers=2,
                            train_transform=TrainPreset(img_size=96),
                            eval_transform=EvalPreset(img_size=96))

Importing this package is light: names are loaded on first use, so `Sample` / `read_samples`
don't pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name → module that defines it
_EXPORTS = {
    "Sample": "imgclf.dataset.samples",
    "read_samples": "imgclf.dataset.samples",
    "split_samples": "imgclf.dataset.split",
    "split_record": "imgclf.dataset.split",
    "write_split": "imgclf.dataset.split",
    "read_split": "imgclf.dataset.split",
    "PreparedData": "imgclf.dataset.prepared",
    "prepare_data": "imgclf.dataset.prepared",
    "build_loaders": "imgclf.dataset.loaders",
}

__all__ = [
    "PreparedData",
    "Sample",
    "build_loaders",
    "prepare_data",
    "read_samples",
    "read_split",
    "split_record",
    "split_samples",
    "write_split",
]

if TYPE_CHECKING:
    from imgclf.dataset.loaders import build_loaders
    from imgclf.dataset.prepared import PreparedData, prepare_data
    from imgclf.dataset.samples import Sample, read_samples
    from imgclf.dataset.split import read_split, split_record, split_samples, write_split


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'imgclf.dataset' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
