"""Run a Predictor over many items: a DataLoader reads, decodes and preprocesses in worker
processes while the main process runs the model, batch after batch.

An item that cannot be read or decoded yields an error string instead of a tensor; it never
stops the run. Per item we record the decode + preprocess time (in its worker) and its share of
the batch's model time, so `--predict` can report latency without a second pass.
"""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from imgclf.decoding import decode_rgb
from imgclf.model.predictor import Predictor
from imgclf.model.single_image import one_torch_thread
from imgclf.predict.inputs import Item, read_item

DEFAULT_BATCH_SIZE = 32


def inference_workers() -> int:
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

    def __init__(
        self, items: Sequence[Item], preprocess: Callable, *, block_private: bool = True
    ) -> None:
        """`block_private`: URLs may reach only globally routable addresses."""
        self.items = items
        self.preprocess = preprocess
        self.block_private = block_private

    def __len__(self) -> int:
        return len(self.items)

    def warm_up(self, calls: int = 3) -> None:
        """Untimed decodes and preprocessing of a small JPEG, so that first-call costs (lazy
        library set-up, first allocations) never land in an item's measured latency (they
        made the first images of a run several times slower: docs/benchmarks.md)."""
        for _ in range(calls):
            self._tensor(_warm_up_jpeg())

    def _tensor(self, data: bytes) -> torch.Tensor:
        """Image file bytes → the preprocessed tensor (decoding errors propagate)."""
        with one_torch_thread():  # already so in loader workers; the same in-process
            return self.preprocess(decode_rgb(data))

    def __getitem__(self, index: int) -> Loaded:
        item = self.items[index]
        if item.error:
            return Loaded(index, None, item.error, 0.0, 0.0)
        start = time.perf_counter()
        try:
            data = read_item(item, block_private=self.block_private)
        except OSError as error:
            return Loaded(index, None, str(error), 0.0, 0.0)
        read_done = time.perf_counter()
        try:
            tensor = self._tensor(data)
        except UnidentifiedImageError:
            return Loaded(index, None, "not an image (no image format recognised)", 0.0, 0.0)
        except Exception as error:  # any decoder failure is this item's failure only
            reason = f"broken image ({type(error).__name__}: {error})"
            return Loaded(index, None, reason, 0.0, 0.0)
        done = time.perf_counter()
        return Loaded(index, tensor, None, (read_done - start) * 1e3, (done - read_done) * 1e3)


@functools.cache
def _warm_up_jpeg() -> bytes:
    """A 64x48 colour JPEG: it takes the same decoder and preset code as any photo."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def _warm_up_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: each worker process warms up its own decoder and preset."""
    get_worker_info().dataset.warm_up()


@dataclass
class Batch:
    """A loader batch: the readable items stacked into one tensor, the rest as errors."""

    indices: list[int]  # items in `tensor`, in order
    tensor: torch.Tensor | None
    errors: dict[int, str]
    read_ms: dict[int, float]
    preprocess_ms: dict[int, float]
    size: int


def collate(loaded: list[Loaded]) -> Batch:
    """Stack in the worker: one shared-memory tensor per batch crosses to the main process,
    not one per image (a segment per image costs more than decoding a small JPEG)."""
    good = [item for item in loaded if item.tensor is not None]
    return Batch(
        indices=[item.index for item in good],
        tensor=torch.stack([item.tensor for item in good]) if good else None,
        errors={item.index: item.error for item in loaded if item.error},
        read_ms={item.index: item.read_ms for item in loaded},
        preprocess_ms={item.index: item.preprocess_ms for item in loaded},
        size=len(loaded),
    )


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
    block_private: bool = True,
) -> Outcome:
    """Classify every item; `progress` is the tqdm description (None: no bar).

    `block_private`: URL items may reach only globally routable addresses.
    """
    workers = inference_workers() if workers is None else workers
    # Worker processes only pay off when there is more than one batch to overlap.
    workers = workers if len(items) > batch_size else 0
    dataset = ItemImages(items, predictor.preset, block_private=block_private)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=_warm_up_worker if workers else None,
    )
    size = len(items)
    probabilities = np.full((size, len(predictor.classes)), np.nan)
    read_ms, preprocess_ms, model_ms = np.zeros(size), np.zeros(size), np.zeros(size)
    errors: dict[int, str] = {}
    # Each new input shape costs the engines a slow setup call: warm up the shapes a run
    # mostly sees, a full batch and a single image (what is left when others failed).
    for shape in sorted({1, min(batch_size, max(size, 1))}):
        predictor.warm_up(shape)
    if not workers:
        dataset.warm_up()
    start = time.perf_counter()
    # disable=None: tqdm draws the bar only when stderr is a terminal.
    bar = tqdm(total=size, desc=progress, unit="img", disable=True if progress is None else None)
    for batch in loader:
        errors.update(batch.errors)
        for index, value in batch.read_ms.items():
            read_ms[index] = value
        for index, value in batch.preprocess_ms.items():
            preprocess_ms[index] = value
        if batch.tensor is not None:
            tic = time.perf_counter()
            probabilities[batch.indices] = predictor.probabilities(batch.tensor)
            model_ms[batch.indices] = (time.perf_counter() - tic) * 1e3 / len(batch.indices)
        bar.update(batch.size)
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
