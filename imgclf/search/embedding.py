"""Embeddings of many images with a Predictor: the same loader as `--predict`, a second output.

DataLoader workers read, decode and preprocess (imgclf.predict's ItemImages and collate, so the
pixels are exactly those `utils/inference.py` classifies) while the main process runs the
engine's two-output call: logits and the penultimate features the classifier head reads. The
features are L2-normalised here, so inner product is cosine similarity. A file or URL that
cannot be read or decoded is an error for that item only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from imgclf.predict.batches import (
    DEFAULT_BATCH_SIZE,
    ItemImages,
    collate,
    inference_workers,
    warm_up_worker,
)
from imgclf.predict.inputs import Item, read_item
from imgclf.search.gallery import Embedded
from imgclf.search.index import as_unit_float32


@dataclass
class EmbedderSettings:
    """How to batch: images per engine call, loader processes (None: one per core, at most 4),
    the progress bar's label (None: no bar), and whether URLs may reach only globally routable
    addresses (imgclf.predict.inputs's guard; --allow-private-urls turns it off)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    progress: str | None = "embedding"
    block_private: bool = True


def embed_items(predictor, items: Sequence[Item], settings: EmbedderSettings) -> Embedded:
    """Unit embeddings (N, D) and logits (N, K) of `items`; failed rows NaN, reasons in errors."""
    workers = inference_workers() if settings.workers is None else settings.workers
    workers = workers if len(items) > settings.batch_size else 0
    dataset = ItemImages(items, predictor.preset, block_private=settings.block_private)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=warm_up_worker if workers else None,
    )
    dim, classes = predictor.embedding_size, len(predictor.classes)
    embeddings = np.full((len(items), dim), np.nan, dtype=np.float32)
    logits = np.full((len(items), classes), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    bar = tqdm(
        total=len(items),
        desc=settings.progress,
        unit="img",
        disable=True if settings.progress is None else None,
    )
    for batch in loader:
        errors.update(batch.errors)
        if batch.tensor is not None:
            batch_logits, features = predictor.embed(batch.tensor)
            logits[batch.indices] = batch_logits
            embeddings[batch.indices] = as_unit_float32(features)
        bar.update(batch.size)
    bar.close()
    return Embedded(embeddings, logits, errors)


class PathEmbedder:
    """`Embed` for the gallery builder: file paths or URLs → Embedded, through one Predictor."""

    def __init__(self, predictor, settings: EmbedderSettings) -> None:
        self.predictor = predictor
        self.settings = settings

    def __call__(self, sources: Sequence[str]) -> Embedded:
        return embed_items(self.predictor, [Item(s) for s in sources], self.settings)


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
