"""The index folder on disk: written so that a reader never sees a half-written index.

Layout of `index/`:
    meta.json            the commit record, written last (atomically): format, the weights
                         file's path and sha256, embedding size, item count, the FAISS index
                         kind, the prototype class names, the generation folder, and the
                         sha256 and size of every file in it
    gen-<n>/items.csv    one row per gallery item: id, path, label, sha256, split (ascending id)
    gen-<n>/embeddings.npy   (N, D) float32 unit rows, in items order
    gen-<n>/logits.npy       (N, K) float32 classifier outputs, in items order
    gen-<n>/prototypes.npy   (C, D) float32, one re-normalised mean embedding per class
    gen-<n>/faiss.index      the FAISS index over embeddings.npy (row r = item r)

A build writes a new generation folder, then meta.json naming it, then removes older ones. An
interrupted build leaves the previous meta.json and its generation intact (a stray newer
generation folder is removed by the next build). Reading checks every file's size against
meta.json and meta.json's own checksum of that table, and by default every file's sha256, so a
truncated or corrupt file is refused with one sentence, never loaded. `query` reads with sizes
only (`checksums=False`): at a million items the sha256 pass costs seconds per query, and a
truncated or missing file, a damaged meta.json and a file another program wrote are still
refused; a same-size byte flip inside the arrays is caught by build, evaluate, add-class, the
service's start, and `query --verify`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from imgclf.errors import InputError
from imgclf.fileio import atomic_write_bytes, atomic_write_json

META_NAME = "meta.json"
FORMAT = "imgclf-search-index"
FORMAT_VERSION = 1
ITEM_COLUMNS = ("id", "path", "label", "sha256", "split")
FILES = ("items.csv", "embeddings.npy", "logits.npy", "prototypes.npy", "faiss.index")
# Items of classes added with add-class carry this split: they come from no data folder, so a
# rebuild over the folder keeps them.
ADDED_SPLIT = "added"


@dataclass(frozen=True)
class GalleryItem:
    """One indexed image: `path` relative to the data root (or as given, for added images)."""

    id: int
    path: str
    label: str
    sha256: str
    split: str


@dataclass
class Gallery:
    """Everything an index folder holds, in memory (see the module docstring)."""

    items: list[GalleryItem]
    embeddings: np.ndarray
    logits: np.ndarray
    prototype_classes: list[str]
    prototypes: np.ndarray
    index: faiss.Index
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def weights_sha256(self) -> str:
        return str(self.meta["weights_sha256"])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _items_csv(items: list[GalleryItem]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ITEM_COLUMNS)
    writer.writerows((i.id, i.path, i.label, i.sha256, i.split) for i in items)
    return buffer.getvalue().encode("utf-8")


def _table_sha256(files: dict[str, Any]) -> str:
    """The checksum of meta.json's file table, so the cheap read can trust its sizes."""
    return _sha256(json.dumps(files, sort_keys=True).encode("utf-8"))


def _generations(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("gen-*") if p.is_dir())


def write_gallery(folder: str | Path, gallery: Gallery) -> Path:
    """Write `gallery` as a new generation of `folder`, commit it in meta.json, drop the old."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-")[1]) for p in _generations(folder) if p.name[4:].isdigit()]
    generation = folder / f"gen-{max(numbers, default=0) + 1:06d}"
    generation.mkdir()
    contents = {
        "items.csv": _items_csv(gallery.items),
        "embeddings.npy": _npy_bytes(np.ascontiguousarray(gallery.embeddings, np.float32)),
        "logits.npy": _npy_bytes(np.ascontiguousarray(gallery.logits, np.float32)),
        "prototypes.npy": _npy_bytes(np.ascontiguousarray(gallery.prototypes, np.float32)),
        "faiss.index": faiss.serialize_index(gallery.index).tobytes(),
    }
    files = {}
    for name, data in contents.items():
        atomic_write_bytes(generation / name, data)
        files[name] = {"sha256": _sha256(data), "bytes": len(data)}
    meta = {
        **gallery.meta,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generation": generation.name,
        "count": len(gallery.items),
        "prototype_classes": list(gallery.prototype_classes),
        "files": files,
        "files_sha256": _table_sha256(files),
    }
    atomic_write_json(folder / META_NAME, meta)  # the commit point
    gallery.meta = meta
    for old in _generations(folder):
        if old != generation:
            shutil.rmtree(old, ignore_errors=True)
    return folder / META_NAME


def _rebuild_hint(folder: Path) -> str:
    return f"rebuild it with: python utils/search.py build --index {folder}"


def read_meta(folder: str | Path) -> dict[str, Any]:
    """meta.json of an index folder; InputError when there is none or it is not ours."""
    folder = Path(folder)
    path = folder / META_NAME
    if not path.is_file():
        raise InputError(
            f"{folder} holds no search index (no {META_NAME}); "
            f"build one with: python utils/search.py build --index {folder}"
        )
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"{path} is damaged ({type(error).__name__}); {_rebuild_hint(folder)}"
        ) from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(
            f"{path} is not an imgclf search index (no '{FORMAT}' marker); {_rebuild_hint(folder)}"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path} has index format version {meta.get('format_version')}, this imgclf reads "
            f"version {FORMAT_VERSION}; {_rebuild_hint(folder)}"
        )
    return meta


def _read_checked(folder: Path, meta: dict[str, Any], name: str, checksums: bool) -> bytes:
    path = folder / str(meta.get("generation", "")) / name
    expected = meta.get("files", {}).get(name, {})
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(
            f"{path} is missing ({error.strerror}); {_rebuild_hint(folder)}"
        ) from error
    if len(data) != expected.get("bytes") or (
        checksums and _sha256(data) != expected.get("sha256")
    ):
        raise InputError(
            f"{path} is truncated or corrupt (its size or sha256 differs from {META_NAME}); "
            f"{_rebuild_hint(folder)}"
        )
    return data


def _parse_items(data: bytes) -> list[GalleryItem]:
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    return [
        GalleryItem(int(r["id"]), r["path"], r["label"], r["sha256"], r["split"]) for r in rows
    ]


def read_gallery(folder: str | Path, *, checksums: bool = True) -> Gallery:
    """Load and verify an index folder; any damage raises InputError naming the file.

    `checksums` False: check sizes (and meta.json's own checksum), not each file's sha256.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    table = meta.get("files")
    if "files_sha256" in meta and _table_sha256(table) != meta["files_sha256"]:
        raise InputError(
            f"{folder / META_NAME} is corrupt (its file table does not match its checksum); "
            f"{_rebuild_hint(folder)}"
        )
    raw = {name: _read_checked(folder, meta, name, checksums) for name in FILES}
    try:
        items = _parse_items(raw["items.csv"])
        arrays = {
            name: np.load(io.BytesIO(raw[name]), allow_pickle=False)
            for name in ("embeddings.npy", "logits.npy", "prototypes.npy")
        }
        index = faiss.deserialize_index(np.frombuffer(raw["faiss.index"], dtype=np.uint8))
    except Exception as error:  # checksums matched: a file written by another program
        raise InputError(
            f"{folder} could not be read ({type(error).__name__}: {error}); "
            f"{_rebuild_hint(folder)}"
        ) from error
    dim, count = int(meta["dim"]), int(meta["count"])
    embeddings = arrays["embeddings.npy"]
    if len(items) != count or embeddings.shape != (count, dim) or index.ntotal != count:
        raise InputError(
            f"{folder} is inconsistent ({len(items)} items, embeddings {embeddings.shape}, "
            f"{index.ntotal} indexed, meta says {count} x {dim}); {_rebuild_hint(folder)}"
        )
    return Gallery(
        items=items,
        embeddings=embeddings,
        logits=arrays["logits.npy"],
        prototype_classes=list(meta["prototype_classes"]),
        prototypes=arrays["prototypes.npy"],
        index=index,
        meta=meta,
    )


def check_weights(meta: dict[str, Any], weights_sha256: str, weights: str, folder: Path) -> None:
    """Refuse an index built with other weights than `weights` (sha256 `weights_sha256`)."""
    if meta.get("weights_sha256") != weights_sha256:
        raise InputError(
            f"{folder} was built with {meta.get('weights')} (sha256 "
            f"{str(meta.get('weights_sha256'))[:12]}...), not with {weights} (sha256 "
            f"{weights_sha256[:12]}...); query with those weights or rebuild the index "
            f"with: python utils/search.py build --weights {weights} --index {folder}"
        )


def check_dim(meta: dict[str, Any], dim: int, folder: Path) -> None:
    """Refuse query embeddings whose size differs from the index's."""
    if int(meta.get("dim", -1)) != dim:
        raise InputError(
            f"{folder} holds {meta.get('dim')}-d embeddings but the model gives {dim}-d ones; "
            f"rebuild the index with this model: python utils/search.py build --index {folder}"
        )
