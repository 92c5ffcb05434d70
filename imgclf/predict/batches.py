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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from imgclf.decoding import decode_rgb
from imgclf.model.predictor import Predictor
from imgclf.model.preprocessing import EvalPreset
from imgclf.model.single_image import one_torch_thread
from imgclf.predict.inputs import Item, read_item

DEFAULT_BATCH_SIZE = 32


def inference_workers() -> int:
    """Loader processes: one per core, at most 4 (decoding small images saturates early)."""
    return min(4, os.cpu_count() or 1)


@dataclass
class Batch:
    """A loader batch: the readable items stacked into one tensor, the rest as errors."""

    indices: list[int]  # items in `tensor`, in order
    tensor: torch.Tensor | None
    errors: dict[int, str]
    read_ms: dict[int, float]
    preprocess_ms: dict[int, float]
    size: int


class ItemImages(Dataset):
    """Items → batches of preprocessed tensors; failures are returned, not raised.

    The DataLoader asks for a whole batch at once (`__getitems__`): each item is read and
    decoded, then the batch is preprocessed together (`EvalPreset.batch`) into one tensor, in
    shared memory when in a worker, so one segment per batch crosses to the main process and
    no per-image object is pickled (per-image Python and transfer costs were more than half of
    the loader's time on small photos: docs/benchmarks.md, Search).
    """

    def __init__(
        self, items: Sequence[Item], preset: EvalPreset, *, block_private: bool = True
    ) -> None:
        """`block_private`: URLs may reach only globally routable addresses."""
        self.items = items
        self.preset = preset
        self.block_private = block_private

    def __len__(self) -> int:
        return len(self.items)

    def warm_up(self, calls: int = 3) -> None:
        """Untimed decodes and preprocessing of a small JPEG, so that first-call costs (lazy
        library set-up, first allocations) never land in an item's measured latency (they
        made the first images of a run several times slower: docs/benchmarks.md)."""
        with one_torch_thread():
            for _ in range(calls):
                self.preset.batch([decode_rgb(_warm_up_jpeg())])

    def _decode(self, data: bytes) -> tuple[torch.Tensor | None, str | None]:
        """Decoded uint8 (3, H, W) pixels, or the reason there are none."""
        try:
            return decode_rgb(data), None
        except UnidentifiedImageError:
            return None, "not an image (no image format recognised)"
        except Exception as error:  # any decoder failure is this item's failure only
            return None, f"broken image ({type(error).__name__}: {error})"

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """The batch of `indices` (what the DataLoader asks for; `collate` passes it on)."""
        zeros = dict.fromkeys(indices, 0.0)
        batch = Batch([], None, {}, zeros, dict(zeros), len(indices))
        pixels: list[torch.Tensor] = []
        with one_torch_thread():  # already so in loader workers; the same in-process
            for index in indices:
                item = self.items[index]
                if item.error:
                    batch.errors[index] = item.error
                    continue
                start = time.perf_counter()
                try:
                    data = read_item(item, block_private=self.block_private)
                except OSError as error:
                    batch.errors[index] = str(error)
                    continue
                read_done = time.perf_counter()
                image, error = self._decode(data)
                if image is None:
                    batch.errors[index] = error or ""
                    continue
                batch.read_ms[index] = (read_done - start) * 1e3
                batch.preprocess_ms[index] = (time.perf_counter() - read_done) * 1e3
                batch.indices.append(index)
                pixels.append(image)
            if not pixels:
                return batch
            start = time.perf_counter()
            batch.tensor = self.preset.batch(pixels, out=self._output(len(pixels)))
        # Each image's share of the batch's resize and normalisation, after its own decode.
        share = (time.perf_counter() - start) * 1e3 / len(pixels)
        for index in batch.indices:
            batch.preprocess_ms[index] += share
        return batch

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def _output(self, count: int) -> torch.Tensor:
        """A (count, 3, S, S) float tensor, in shared memory in a loader worker (as
        default_collate does), so sending it to the main process copies nothing."""
        size = self.preset.preprocessing.img_size
        shape = (count, 3, size, size)
        if get_worker_info() is None:
            return torch.empty(shape)
        storage = torch.empty(0)._typed_storage()._new_shared(count * 3 * size * size)
        return torch.empty(0).new(storage).view(shape)


@functools.cache
def _warm_up_jpeg() -> bytes:
    """A 64x48 colour JPEG: it takes the same decoder and preset code as any photo."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def warm_up_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: each worker process warms up its own decoder and preset."""
    get_worker_info().dataset.warm_up()


def collate(batch: Batch) -> Batch:
    """The DataLoader's collate_fn: `ItemImages.__getitems__` already made the batch."""
    return batch


def image_batches(dataset: ItemImages, batch_size: int, workers: int) -> DataLoader:
    """The loader over `dataset` that `--predict`, evaluation and the search share: batches of
    `batch_size` in order, made by `workers` processes (0: in this process)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=warm_up_worker if workers else None,
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
    loader = image_batches(dataset, batch_size, workers)
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
