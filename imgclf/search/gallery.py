"""Build and grow a gallery: data folder records → embeddings → prototypes → FAISS → index folder.

The model stays behind an `Embed` callable (sources → embeddings, logits, per-item errors), so
this module knows nothing of engines. A build reuses every embedding it already has for the same
weights file (the committed index, and chunks an interrupted build left), embeds only images
whose sha256 it has not seen, drops items whose file left the folder, and keeps the images that
`add-class` added. Item ids are stable across builds: an item (path, sha256) keeps its id, a new
one gets the next free id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import InputError
from imgclf.search.checkpoint import EmbeddingCheckpoint
from imgclf.search.index import (
    EXACT_MAX_ITEMS,
    as_unit_float32,
    build_faiss,
    calibrate_nprobe,
    choose_index,
    set_nprobe,
)
from imgclf.search.metrics import class_prototypes
from imgclf.search.store import (
    ADDED_SPLIT,
    META_NAME,
    Gallery,
    GalleryItem,
    check_weights,
    read_gallery,
    write_gallery,
)

CHUNK = 512


@dataclass(frozen=True)
class Record:
    """An image to index: `path` as stored (relative to the data root), `source` to read."""

    path: str
    label: str
    sha256: str
    split: str
    source: str


@dataclass
class Embedded:
    """What an Embed call returns, aligned with its sources (failed rows are NaN)."""

    embeddings: np.ndarray
    logits: np.ndarray
    errors: dict[int, str]


# sources → (start, Embedded of sources[start:start + n]) batch after batch, in order.
Embed = Callable[[Sequence[str]], Iterable[tuple[int, Embedded]]]


@dataclass(frozen=True)
class ModelInfo:
    """The weights file an index is tied to."""

    weights: str
    sha256: str
    arch: str
    classes: tuple[str, ...]


@dataclass
class BuildReport:
    """What a build did, for the command to print."""

    gallery: Gallery
    embedded: int
    reused: int
    dropped: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _previous(folder: Path, model: ModelInfo, notes: list[str]) -> Gallery | None:
    """The committed gallery when it can be reused for `model`, else None (with a note why)."""
    if not (folder / META_NAME).is_file():
        return None
    try:
        gallery = read_gallery(folder)
        check_weights(gallery.meta, model.sha256, model.weights, folder)
    except InputError as error:
        notes.append(f"not reusing the existing index: {error}")
        return None
    return gallery


def embed_in_chunks(
    embed: Embed,
    records: Sequence[Record],
    checkpoint: EmbeddingCheckpoint,
    chunk: int = CHUNK,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[tuple[str, str]]]:
    """Embed `records` in one stream, saving a checkpoint chunk whenever `chunk` embeddings
    are ready (and the rest at the end): sha256 → vectors, and the (path, reason) of each
    failure."""
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    failed: list[tuple[str, str]] = []
    pending: list[tuple[str, np.ndarray, np.ndarray]] = []

    def save() -> None:
        shas, embeddings, logits = zip(*pending, strict=True)
        checkpoint.save(list(shas), np.stack(embeddings), np.stack(logits))
        pending.clear()

    if not records:
        return found, failed
    for start, part in embed([r.source for r in records]):
        for row in range(len(part.embeddings)):
            record = records[start + row]
            if row in part.errors:
                failed.append((record.path, part.errors[row]))
                continue
            vectors = (part.embeddings[row], part.logits[row])
            found[record.sha256] = vectors
            pending.append((record.sha256, *vectors))
        if len(pending) >= chunk:
            save()
    if pending:
        save()
    return found, failed


def prototypes_of(
    items: Sequence[GalleryItem], embeddings: np.ndarray, classes: Sequence[str]
) -> np.ndarray:
    """One prototype per class: the mean of its training items, or of all its items when it has
    none in the training split (a folder without a stored split, or an added class)."""
    labels = np.array([it.label for it in items])
    train = np.array([it.split == "train" for it in items])
    chosen = np.zeros(len(items), dtype=bool)
    for name in classes:
        mine = labels == name
        chosen |= mine & train if (mine & train).any() else mine
    index_of = {name: k for k, name in enumerate(classes)}
    rows = np.flatnonzero(chosen)
    return class_prototypes(
        embeddings[rows], np.array([index_of[labels[r]] for r in rows], dtype=int), len(classes)
    )


def assemble(
    items: list[GalleryItem],
    vectors: dict[str, tuple[np.ndarray, np.ndarray]],
    model: ModelInfo,
    *,
    kind: str,
    exact_max: int = EXACT_MAX_ITEMS,
    extra: dict[str, Any] | None = None,
) -> Gallery:
    """A Gallery over `items` (sorted by id) with its prototypes and FAISS index."""
    items = sorted(items, key=lambda it: it.id)
    embeddings = as_unit_float32(np.stack([vectors[it.sha256][0] for it in items]))
    logits = np.stack([vectors[it.sha256][1] for it in items]).astype(np.float32)
    labels = [it.label for it in items]
    classes = list(model.classes) + sorted(set(labels) - set(model.classes))
    classes = [c for c in classes if c in set(labels)]
    choice = choose_index(len(items), kind, exact_max)
    index = build_faiss(embeddings, choice)
    nprobe, recall = calibrate_nprobe(index, embeddings)
    set_nprobe(index, nprobe)
    meta = {
        "weights": model.weights,
        "weights_sha256": model.sha256,
        "arch": model.arch,
        "model_classes": list(model.classes),
        "dim": int(embeddings.shape[1]),
        "index": {
            "kind": choice.kind,
            "factory": choice.factory,
            "reason": choice.reason,
            "exact_max_items": exact_max,
            "nprobe": nprobe,
            "calibrated_recall_at_10": round(recall, 4),
        },
        **(extra or {}),
    }
    return Gallery(
        items=items,
        embeddings=embeddings,
        logits=logits,
        prototype_classes=classes,
        prototypes=prototypes_of(items, embeddings, classes),
        index=index,
        meta=meta,
    )


def build_gallery(
    folder: str | Path,
    records: Sequence[Record],
    embed: Embed,
    model: ModelInfo,
    *,
    kind: str = "auto",
    exact_max: int = EXACT_MAX_ITEMS,
    chunk: int = CHUNK,
    extra: dict[str, Any] | None = None,
) -> BuildReport:
    """Index `records` into `folder`, reusing what an earlier (or interrupted) build embedded."""
    folder = Path(folder)
    notes: list[str] = []
    previous = _previous(folder, model, notes)
    checkpoint = EmbeddingCheckpoint(folder, model.sha256)
    known = checkpoint.load()
    old_ids: dict[tuple[str, str], int] = {}
    kept_added: list[GalleryItem] = []
    if previous is not None:
        for row, item in enumerate(previous.items):
            known.setdefault(item.sha256, (previous.embeddings[row], previous.logits[row]))
            old_ids[(item.path, item.sha256)] = item.id
            if item.split == ADDED_SPLIT:
                kept_added.append(item)
    todo, seen = [], set()
    for record in records:
        if record.sha256 not in known and record.sha256 not in seen:
            seen.add(record.sha256)
            todo.append(record)
    fresh, failed = embed_in_chunks(embed, todo, checkpoint, chunk)
    known.update(fresh)
    next_id = max(old_ids.values(), default=-1) + 1
    items = list(kept_added)
    for record in records:
        if record.sha256 not in known:
            continue  # it failed to embed: listed in `failed`
        item_id = old_ids.get((record.path, record.sha256))
        if item_id is None:
            item_id, next_id = next_id, next_id + 1
        items.append(GalleryItem(item_id, record.path, record.label, record.sha256, record.split))
    if not items:
        raise InputError(
            f"None of the {len(records)} images could be embedded, so {folder} was left as it "
            "was; check the images (the failures are listed above) or pass another --data."
        )
    kept = {it.id for it in items}
    dropped = sum(1 for key, i in old_ids.items() if i not in kept)
    gallery = assemble(items, known, model, kind=kind, exact_max=exact_max, extra=extra)
    write_gallery(folder, gallery)
    checkpoint.clear()
    return BuildReport(gallery, len(fresh), len(items) - len(fresh), dropped, failed, notes)


def check_new_class(gallery: Gallery, name: str, folder: str | Path) -> None:
    """Refuse a class name the index already has (a model class or an added one)."""
    if not name.strip():
        raise InputError("The new class needs a name that is not empty.")
    if name in gallery.prototype_classes or name in gallery.meta.get("model_classes", []):
        raise InputError(
            f"Class {name!r} already exists in {folder}; choose another name "
            "(add-class only adds new classes)."
        )


def add_class(
    folder: str | Path,
    gallery: Gallery,
    name: str,
    records: Sequence[Record],
    vectors: dict[str, tuple[np.ndarray, np.ndarray]],
    model: ModelInfo,
) -> Gallery:
    """A new class from `records` (already embedded into `vectors`), written into `folder`."""
    check_new_class(gallery, name, folder)
    if not records:
        raise InputError(f"No image of the new class {name!r} could be embedded; nothing changed.")
    known = {
        it.sha256: (gallery.embeddings[r], gallery.logits[r]) for r, it in enumerate(gallery.items)
    }
    known.update(vectors)
    next_id = max((it.id for it in gallery.items), default=-1) + 1
    items = list(gallery.items) + [
        GalleryItem(next_id + n, r.path, name, r.sha256, ADDED_SPLIT)
        for n, r in enumerate(records)
    ]
    kept = {k: v for k, v in gallery.meta.items() if k not in ("index",)}
    info = gallery.meta.get("index", {})
    kind = info.get("kind", "auto")
    rebuilt = assemble(
        items,
        known,
        model,
        kind=kind,
        exact_max=int(info.get("exact_max_items", EXACT_MAX_ITEMS)),
        extra={k: v for k, v in kept.items() if k not in _ASSEMBLED},
    )
    write_gallery(folder, rebuilt)
    return rebuilt


# meta.json keys assemble() and write_gallery() set themselves.
_ASSEMBLED = frozenset(
    {
        "weights",
        "weights_sha256",
        "arch",
        "model_classes",
        "dim",
        "index",
        "format",
        "format_version",
        "generation",
        "count",
        "prototype_classes",
        "files",
    }
)
