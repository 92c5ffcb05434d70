"""Embeddings of many images with a Predictor: the same loading as `--predict`, a second output.

Items are read, decoded and preprocessed by imgclf.predict's ItemImages (so the pixels are
exactly those `utils/inference.py` classifies), then the engine's two-output call gives logits
and the penultimate features the classifier head reads. The features are L2-normalised here,
so inner product is cosine similarity. A file or URL that cannot be read or decoded is an error
for that item only.

By default the work runs in lanes (`lanes_and_threads`): one thread per core loads a batch and
runs the engine on it, on one torch thread, while the other lanes do the same with the next
batches. The model on one thread per core does more per core than on all cores' OpenMP
threads, which wait for each other at every operator, and a lane's decoding overlaps the other
lanes' model calls; no loader process has to start or hand tensors over (measured:
docs/benchmarks.md, Search). `workers` N > 0 keeps the older split: N DataLoader processes
decode while the calling thread runs the engine on the remaining cores. Batches stream to the
caller in order (`embed_batches`), so a build checkpoints as it goes.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
from tqdm import tqdm

from imgclf.model.single_image import torch_threads
from imgclf.predict.batches import DEFAULT_BATCH_SIZE, Batch, ItemImages, image_batches
from imgclf.predict.inputs import Item, read_item
from imgclf.search.gallery import Embedded
from imgclf.search.index import as_unit_float32

# Images per engine call for `build`: at 64 px eager torch runs batches of 128 faster than
# batches of 32 (1.1-2.1x in three runs, docs/benchmarks.md, Search).
BUILD_BATCH_SIZE = 128


def lanes_and_threads(workers: int | None, count: int, batch_size: int) -> tuple[int, int]:
    """(engine lanes, torch threads per lane) for `count` items and `workers` loader
    processes (None: the default, lanes; see the module docstring).

    One lane per core, each on one torch thread, when there is more than one batch; one lane on
    every core for a single batch or in-process loading (`workers` 0); beside `workers` loader
    processes one lane on the remaining cores.
    """
    cores = os.cpu_count() or 1
    if workers is None and count > batch_size:
        return cores, 1
    if workers:
        return 1, max(1, cores - workers)
    return 1, cores


@dataclass
class EmbedderSettings:
    """How to batch: images per engine call, loader processes (None: none, the lanes load
    their own batches; 0: load in the calling thread), the progress bar's label (None: no
    bar), and whether URLs may reach only globally routable addresses (imgclf.predict.inputs's
    guard; --allow-private-urls turns it off)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    progress: str | None = "embedding"
    block_private: bool = True


Output = tuple[np.ndarray, np.ndarray] | None  # the engine's (logits, features) of a batch


def _embedded(predictor, batch: Batch) -> tuple[Batch, Output]:
    """The batch (its tensor let go: batches wait in a queue) and the engine's output."""
    tensor, batch.tensor = batch.tensor, None
    return batch, predictor.embed(tensor) if tensor is not None else None


def _lanes(predictor, dataset: ItemImages, batch_size: int, lanes: int) -> Iterator:
    """(batch, output) in order, each batch loaded and embedded by one of `lanes` threads."""

    def lane(start: int) -> tuple[Batch, Output]:
        indices = range(start, min(start + batch_size, len(dataset)))
        return _embedded(predictor, dataset.__getitems__(indices))

    starts = iter(range(0, len(dataset), batch_size))
    pool = ThreadPoolExecutor(lanes, thread_name_prefix="embed-lane")
    try:
        # A few batches ahead per lane, so a lane never waits for the consumer.
        pending = deque(pool.submit(lane, start) for start in islice(starts, 2 * lanes))
        while pending:
            done = pending.popleft().result()
            start = next(starts, None)
            if start is not None:
                pending.append(pool.submit(lane, start))
            yield done
    finally:
        pool.shutdown(cancel_futures=True)


def embed_batches(
    predictor, items: Sequence[Item], settings: EmbedderSettings
) -> Iterator[tuple[int, Embedded]]:
    """(start, Embedded of items[start:start + n]) batch after batch, in order; failed rows
    NaN, their reasons in `errors` (keys relative to `start`)."""
    lanes, threads = lanes_and_threads(settings.workers, len(items), settings.batch_size)
    dataset = ItemImages(items, predictor.preset, block_private=settings.block_private)
    dim, classes = predictor.embedding_size, len(predictor.classes)
    bar = tqdm(
        total=len(items),
        desc=settings.progress,
        unit="img",
        disable=True if settings.progress is None else None,
    )
    start = 0
    with torch_threads(threads):
        if lanes > 1:
            outputs = _lanes(predictor, dataset, settings.batch_size, lanes)
        else:
            workers = settings.workers if len(items) > settings.batch_size else 0
            loader = image_batches(dataset, settings.batch_size, workers or 0)
            outputs = (_embedded(predictor, batch) for batch in loader)
        for batch, output in outputs:
            embeddings = np.full((batch.size, dim), np.nan, dtype=np.float32)
            logits = np.full((batch.size, classes), np.nan, dtype=np.float32)
            if output is not None:
                rows = [index - start for index in batch.indices]
                logits[rows] = output[0]
                embeddings[rows] = as_unit_float32(output[1])
            errors = {index - start: reason for index, reason in batch.errors.items()}
            yield start, Embedded(embeddings, logits, errors)
            start += batch.size
            bar.update(batch.size)
    bar.close()


def embed_items(predictor, items: Sequence[Item], settings: EmbedderSettings) -> Embedded:
    """Unit embeddings (N, D) and logits (N, K) of `items`; failed rows NaN, reasons in errors."""
    dim, classes = predictor.embedding_size, len(predictor.classes)
    embeddings = np.full((len(items), dim), np.nan, dtype=np.float32)
    logits = np.full((len(items), classes), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    for start, part in embed_batches(predictor, items, settings):
        embeddings[start : start + len(part.embeddings)] = part.embeddings
        logits[start : start + len(part.logits)] = part.logits
        errors.update({start + row: reason for row, reason in part.errors.items()})
    return Embedded(embeddings, logits, errors)


class PathEmbedder:
    """`Embed` for the gallery builder: file paths or URLs → a stream of Embedded batches,
    through one Predictor."""

    def __init__(self, predictor, settings: EmbedderSettings) -> None:
        self.predictor = predictor
        self.settings = settings

    def __call__(self, sources: Sequence[str]) -> Iterator[tuple[int, Embedded]]:
        return embed_batches(self.predictor, [Item(s) for s in sources], self.settings)


def read_and_hash(
    items: Sequence[Item], *, block_private: bool = True
) -> tuple[list[tuple[Item, str]], dict[str, str]]:
    """(item, sha256 of its bytes) for every readable item, and source → reason for the rest.

    For add-class and query, whose few inputs are read in the main process: the bytes are hashed
    to tie a gallery item to its content, then decoded by the loader from the same source.
    """
    read: list[tuple[Item, str]] = []
    failed: dict[str, str] = {}
    for item in items:
        if item.error:
            failed[item.source] = item.error
            continue
        try:
            data = read_item(item, block_private=block_private)
            read.append((item, hashlib.sha256(data).hexdigest()))
        except OSError as error:
            failed[item.source] = str(error) or type(error).__name__
    return read, failed
