"""Run a Predictor over many items: a DataLoader reads, decodes and preprocesses in worker
processes while the main process runs the model, batch after batch.

An item that cannot be read or decoded yields an error string instead of a tensor; it never
stops the run. Per item we record the decode + preprocess time (in its worker) and its share of
the batch's model time, so `--predict` can report latency without a second pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imgclf.imaging import open_rgb
from imgclf.serve.inputs import Item, read_item
from imgclf.serve.predictor import Predictor

DEFAULT_BATCH_SIZE = 32


def default_workers() -> int:
    """Loader processes: one per core, at most 4 (decoding small images saturates early)."""
    return min(4, os.cpu_count() or 1)


@dataclass
class Loaded:
    """One item after reading: its tensor or the reason it failed, and the time it took."""

    index: int
    tensor: torch.Tensor | None
    error: str | None
    read_ms: float
    preprocess_ms: float


class ItemImages(Dataset):
    """Items → preprocessed tensors; failures are returned, not raised."""

    def __init__(self, items: Sequence[Item], preprocess: Callable) -> None:
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Loaded:
        item = self.items[index]
        if item.error:
            return Loaded(index, None, item.error, 0.0, 0.0)
        start = time.perf_counter()
        try:
            data = read_item(item)
        except OSError as error:
            return Loaded(index, None, str(error), 0.0, 0.0)
        read_done = time.perf_counter()
        try:
            tensor = self.preprocess(open_rgb(data))
        except UnidentifiedImageError:
            return Loaded(index, None, "not an image (no image format recognised)", 0.0, 0.0)
        except Exception as error:  # any decoder failure is this item's failure only
            reason = f"broken image ({type(error).__name__}: {error})"
            return Loaded(index, None, reason, 0.0, 0.0)
        done = time.perf_counter()
        return Loaded(index, tensor, None, (read_done - start) * 1e3, (done - read_done) * 1e3)


def _keep_list(batch: list[Loaded]) -> list[Loaded]:
    return batch  # tensors are stacked in the main process: failed items have none


@dataclass
class Outcome:
    """Results aligned with the items: probabilities (NaN rows for failures) and timings."""

    probabilities: np.ndarray
    errors: dict[int, str]
    read_ms: np.ndarray
    preprocess_ms: np.ndarray
    model_ms: np.ndarray
    batch_size: int
    seconds: float

    @property
    def ok(self) -> np.ndarray:
        """Indices of the items that were classified."""
        return np.flatnonzero(~np.isnan(self.probabilities[:, 0]))


def predict_items(
    predictor: Predictor,
    items: Sequence[Item],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: str | None = None,
) -> Outcome:
    """Classify every item; `progress` is the tqdm description (None: no bar)."""
    workers = default_workers() if workers is None else workers
    # Worker processes only pay off when there is more than one batch to overlap.
    workers = workers if len(items) > batch_size else 0
    loader = DataLoader(
        ItemImages(items, predictor.preset),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_keep_list,
    )
    size = len(items)
    probabilities = np.full((size, len(predictor.classes)), np.nan)
    read_ms, preprocess_ms, model_ms = np.zeros(size), np.zeros(size), np.zeros(size)
    errors: dict[int, str] = {}
    # Warm up at the batch size the run starts with: each new shape costs a setup call.
    predictor.warm_up(min(batch_size, max(size, 1)))
    start = time.perf_counter()
    # disable=None: tqdm draws the bar only when stderr is a terminal.
    bar = tqdm(total=size, desc=progress, unit="img", disable=True if progress is None else None)
    for batch in loader:
        good = [loaded for loaded in batch if loaded.tensor is not None]
        for loaded in batch:
            read_ms[loaded.index] = loaded.read_ms
            preprocess_ms[loaded.index] = loaded.preprocess_ms
            if loaded.error:
                errors[loaded.index] = loaded.error
        if good:
            indices = [loaded.index for loaded in good]
            tic = time.perf_counter()
            probabilities[indices] = predictor.probabilities(
                torch.stack([loaded.tensor for loaded in good])
            )
            model_ms[indices] = (time.perf_counter() - tic) * 1e3 / len(good)
        bar.update(len(batch))
    bar.close()
    return Outcome(
        probabilities,
        errors,
        read_ms,
        preprocess_ms,
        model_ms,
        batch_size,
        time.perf_counter() - start,
    )
