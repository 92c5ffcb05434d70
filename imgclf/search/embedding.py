"""Embeddings of many images with a Predictor: the same loader as `--predict`, a second output.

DataLoader workers read, decode and preprocess (imgclf.predict's ItemImages and collate, so the
pixels are exactly those `utils/inference.py` classifies) while the main process runs the
engine's two-output call: logits and the penultimate features the classifier head reads. The
features are L2-normalised here, so inner product is cosine similarity. A file or URL that
cannot be read or decoded is an error for that item only.

The cores are split between the two, never oversubscribed (`split_cores`): torch's OpenMP
threads wait for each other at every operator, so a loader worker that takes a core from one
of them stalls the whole model call (measured: docs/benchmarks.md, Search). One loader runs
over all the images of a call, its batches streamed to the caller (`embed_batches`), so a
build checkpoints as it goes without restarting the loader's workers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from imgclf.model.single_image import torch_threads
from imgclf.predict.batches import DEFAULT_BATCH_SIZE, ItemImages, image_batches
from imgclf.predict.inputs import Item, read_item
from imgclf.search.gallery import Embedded
from imgclf.search.index import as_unit_float32

# Images per engine call for `build`: at 64 px eager torch runs batches of 128 faster than
# batches of 32 (1.1-2.1x in three runs, docs/benchmarks.md, Search).
BUILD_BATCH_SIZE = 128


def split_cores(cores: int | None = None) -> tuple[int, int]:
    """(loader workers, torch threads for the engine) for `cores` (None: this machine's).

    Half the cores decode (at most 4, as `--predict`), the rest run the model; one core: no
    workers. Decoding and preprocessing a small photo costs about half of what the model
    costs per image at 64 px, so the loader needs fewer cores than the engine.
    """
    cores = cores or os.cpu_count() or 1
    if cores == 1:
        return 0, 1
    workers = max(1, min(4, cores // 2))
    return workers, cores - workers


@dataclass
class EmbedderSettings:
    """How to batch: images per engine call, loader processes (None: `split_cores`), the
    progress bar's label (None: no bar), and whether URLs may reach only globally routable
    addresses (imgclf.predict.inputs's guard; --allow-private-urls turns it off)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    progress: str | None = "embedding"
    block_private: bool = True


def embed_batches(
    predictor, items: Sequence[Item], settings: EmbedderSettings
) -> Iterator[tuple[int, Embedded]]:
    """(start, Embedded of items[start:start + n]) batch after batch, in order; failed rows
    NaN, their reasons in `errors` (keys relative to `start`)."""
    auto_workers, threads = split_cores()
    workers = auto_workers if settings.workers is None else settings.workers
    workers = workers if len(items) > settings.batch_size else 0
    if not workers:
        threads = os.cpu_count() or 1
    dataset = ItemImages(items, predictor.preset, block_private=settings.block_private)
    loader = image_batches(dataset, settings.batch_size, workers)
    dim, classes = predictor.embedding_size, len(predictor.classes)
    bar = tqdm(
        total=len(items),
        desc=settings.progress,
        unit="img",
        disable=True if settings.progress is None else None,
    )
    start = 0
    with torch_threads(threads):
        for batch in loader:
            embeddings = np.full((batch.size, dim), np.nan, dtype=np.float32)
            logits = np.full((batch.size, classes), np.nan, dtype=np.float32)
            if batch.tensor is not None:
                rows = [index - start for index in batch.indices]
                batch_logits, features = predictor.embed(batch.tensor)
                logits[rows] = batch_logits
                embeddings[rows] = as_unit_float32(features)
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
