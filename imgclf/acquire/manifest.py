"""`<out>/manifest.csv`: one row per input URL, in input order; the one reader and writer of it.

Columns (the contract with the dataset stage, see docs/architecture.md):
`url,label,split,status,reason,path,sha256,width,height,bytes,attempts,duplicate_of`.
`path` is relative to `--out`; `width`/`height` are the upright size (EXIF orientation applied).
Every program that reads a manifest reads it through `read_manifest` (or `ManifestIndex`), which
reads anything `ManifestWriter` writes, also after a spreadsheet re-saved it (BOM, CRLF), and
names the file and line of anything it cannot read.

A run never touches `manifest.csv` until it is done: it appends its rows to
`.manifest.partial.csv` (flushed as it goes) and finally renames that over `manifest.csv`, so the
previous manifest stays whole whatever happens in between. A run killed on the way leaves both
files; the next run merges them first (`recover`): the partial file's rows are the newer ones.
Old rows are found by URL and label (`ManifestIndex`), not by position, so edited, removed or
reordered input rows cost only their own downloads.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imgclf.acquire.layout import MANIFEST_NAME, PARTIAL_NAME, SHARDS_NAME, STATS_NAME
from imgclf.acquire.lock import download_running
from imgclf.acquire.reader import UrlRow, long_field_csv_reader
from imgclf.errors import InputError
from imgclf.fileio import atomic_write

COLUMNS = (
    "url",
    "label",
    "split",
    "status",
    "reason",
    "path",
    "sha256",
    "width",
    "height",
    "bytes",
    "attempts",
    "duplicate_of",
)
# Written by versions before the partial file: the manifest moved aside during a run.
LEGACY_PREVIOUS_NAME = ".manifest.previous.csv"
UNFINISHED_NAMES = (PARTIAL_NAME, LEGACY_PREVIOUS_NAME, SHARDS_NAME)
_INT_COLUMNS = ("width", "height", "bytes", "attempts")


@dataclass
class ManifestRow:
    """One manifest line; integers are None where the column is empty."""

    url: str
    label: str
    split: str
    status: str
    reason: str = ""
    path: str = ""
    sha256: str = ""
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    attempts: int | None = None
    duplicate_of: str = ""

    def cells(self) -> list[str]:
        """The row as CSV cells in COLUMNS order."""
        values = (getattr(self, name) for name in COLUMNS)
        return ["" if value is None else str(value) for value in values]

    @classmethod
    def from_record(cls, record: dict[str, str]) -> ManifestRow:
        """Parse a record by column name (missing columns read as empty)."""
        values: dict[str, object] = {name: record.get(name) or "" for name in COLUMNS}
        for name in _INT_COLUMNS:
            text = values[name]
            values[name] = int(text) if isinstance(text, str) and text.isdigit() else None
        return cls(**values)  # type: ignore[arg-type]


def row_key(url: str, label: str) -> int:
    """64-bit key of a (url, label) pair: what resume matches old rows by."""
    digest = hashlib.blake2b(f"{url}\0{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class _Lines:
    """Decoded lines of a binary file, counting the byte offset where the next line starts."""

    def __init__(self, handle: IO[bytes], path: Path) -> None:
        self.handle, self.path = handle, path
        self.offset = handle.tell()
        self.number = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.handle.readline()
        if not line:
            raise StopIteration
        if self.offset == 0 and line.startswith(codecs.BOM_UTF8):
            self.offset, line = len(codecs.BOM_UTF8), line[len(codecs.BOM_UTF8) :]  # re-saved
        self.offset += len(line)
        self.number += 1
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(
                f"{self.path} line {self.number} is not UTF-8; save the manifest as UTF-8 CSV."
            ) from None


class _Records:
    """(offset, line, row) for every data row of a manifest file, streamed."""

    def __init__(self, handle: IO[bytes], path: Path, required: Iterable[str]) -> None:
        self.path = path
        self.lines = _Lines(handle, path)
        first = next(self.lines, None)
        # A spreadsheet set to another locale re-saves with `;` (or tabs) between the cells.
        delimiter = "," if first is None or "," in first else _delimiter_of(first)
        self.reader = long_field_csv_reader(self.lines, delimiter)
        header = None if first is None else next(long_field_csv_reader([first], delimiter), [])
        self.delimiter = delimiter
        self.columns = [name.strip() for name in header or []]
        missing = [name for name in COLUMNS if name in required and name not in self.columns]
        if missing and header is not None:  # an empty file (killed before its header) has no rows
            raise InputError(
                f"{path} lacks the column(s) {', '.join(missing)}; "
                "pass the manifest.csv written by utils/download_data.py."
            )

    def _next(self) -> list[str] | None:
        try:
            return next(self.reader, None)
        except csv.Error as error:
            raise InputError(
                f"{self.path} line {self.lines.number} is not valid CSV ({error}); "
                "rerun the download to rewrite it."
            ) from None

    def __iter__(self) -> Iterator[tuple[int, int, ManifestRow]]:
        while True:
            offset = self.lines.offset
            cells = self._next()
            if cells is None:
                return
            if not any(cells):
                continue
            yield offset, self.lines.number, self.row(cells)

    def row(self, cells: list[str]) -> ManifestRow:
        return ManifestRow.from_record(dict(zip(self.columns, cells, strict=False)))


def _delimiter_of(header: str) -> str:
    return max((";", "\t"), key=header.count) if (";" in header or "\t" in header) else ","


def read_manifest(
    path: Path, required: Iterable[str] = ("url", "label", "status")
) -> Iterator[tuple[int, ManifestRow]]:
    """Stream (line number, row) of a manifest file (no file: no rows).

    InputError naming the file (and line) when it lacks a `required` column or cannot be read.
    """
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for _offset, line, row in _Records(handle, path, tuple(required)):
            yield line, row


def drop_partial_last_line(path: Path) -> None:
    """Cut a line a killed writer left half-written (the file must end with a newline)."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        tail_start = max(0, size - 1_048_576)
        handle.seek(tail_start)
        tail = handle.read()
        handle.truncate(tail_start + tail.rfind(b"\n") + 1)


class ManifestIndex:
    """Old rows of a manifest by (url, label): `take(row)` returns the old row for `row` once.

    Memory: a key and a file offset per row, about 120 bytes (the rows themselves stay on disk
    and are read back when taken). A URL listed twice with one label has two old rows, taken in
    order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        # key -> offset, or a list of offsets in file order when the key occurs more than once
        self._offsets: dict[int, int | list[int]] = {}
        records = _Records(self._handle, path, ("url", "label", "status"))
        self._columns = records.columns
        self._delimiter = records.delimiter
        for offset, _line, row in records:
            key = row_key(row.url, row.label)
            known = self._offsets.get(key)
            if known is None:
                self._offsets[key] = offset
            elif isinstance(known, list):
                known.append(offset)
            else:
                self._offsets[key] = [known, offset]

    def take(self, row: UrlRow) -> ManifestRow | None:
        """The old row for input `row` (its split updated to the input's), or None."""
        key = row_key(row.url, row.label)
        while (offset := self._pop(key)) is not None:
            old = self._row_at(offset)
            if (old.url, old.label) == (row.url, row.label):  # not a 64-bit key collision
                return old if old.split == row.split else dataclasses.replace(old, split=row.split)
        return None

    def _pop(self, key: int) -> int | None:
        known = self._offsets.get(key)
        if isinstance(known, list):
            offset = known.pop(0)
            if not known:
                del self._offsets[key]
            return offset
        if known is not None:
            del self._offsets[key]
        return known

    def rest(self) -> Iterator[ManifestRow]:
        """The rows not taken yet, in file order (each once)."""
        remaining = sorted(
            offset
            for known in self._offsets.values()
            for offset in (known if isinstance(known, list) else [known])
        )
        self._offsets.clear()
        for offset in remaining:
            yield self._row_at(offset)

    def _row_at(self, offset: int) -> ManifestRow:
        self._handle.seek(offset)
        cells = next(long_field_csv_reader(_Lines(self._handle, self.path), self._delimiter))
        return ManifestRow.from_record(dict(zip(self._columns, cells, strict=False)))

    def close(self) -> None:
        self._handle.close()


class ManifestWriter:
    """Appends rows to a manifest file; `flush()` makes them visible to a reader or a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._handle, lineterminator="\n")
        self._writer.writerow(COLUMNS)
        self._handle.flush()

    def write(self, row: ManifestRow) -> None:
        """Append one row (buffered until `flush`)."""
        self._writer.writerow(row.cells())

    def flush(self) -> None:
        """Hand buffered rows to the OS: they survive a kill of this process."""
        self._handle.flush()

    def close(self) -> None:
        """Flush, fsync and close."""
        if self._handle.closed:
            return
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        finally:
            self._handle.close()


def recover(out: Path, input_rows: Callable[[], Iterable[UrlRow]]) -> Path | None:
    """Fold what a killed run left into `manifest.csv`; return it (None when there is none).

    The rows of the partial file (or of an older version's `manifest.csv`, with its moved-aside
    `.manifest.previous.csv`) are newer than those of the manifest they would have replaced;
    they are merged row by row along the input and written atomically. Safe to repeat.
    """
    manifest = out / MANIFEST_NAME
    legacy = out / LEGACY_PREVIOUS_NAME
    if legacy.exists():
        _merge(manifest, legacy, manifest, input_rows)
        legacy.unlink(missing_ok=True)
    partial = out / PARTIAL_NAME
    if partial.exists():
        _merge(partial, manifest, manifest, input_rows)
        partial.unlink(missing_ok=True)
    return manifest if manifest.exists() else None


def _merge(
    newer_path: Path,
    older_path: Path,
    target: Path,
    input_rows: Callable[[], Iterable[UrlRow]],
) -> None:
    for path in (newer_path, older_path):
        drop_partial_last_line(path)
    if not older_path.exists():
        os.replace(newer_path, target)
        return
    if not newer_path.exists():
        os.replace(older_path, target)
        return
    newer, older = ManifestIndex(newer_path), ManifestIndex(older_path)
    try:

        def write_merged(handle: IO[bytes]) -> None:
            text = TextSink(handle)
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(COLUMNS)
            for row in input_rows():
                new, old = newer.take(row), older.take(row)
                if new or old:
                    writer.writerow((new or old).cells())  # type: ignore[union-attr]

        atomic_write(target, write_merged)
    finally:
        newer.close()
        older.close()


def unfinished_download(root: Path) -> str | None:
    """One sentence when `root` shows a download that is running or did not finish, else None.

    Reading such a folder would silently train on part of it (or, with the manifest gone, on
    plain class folders without the manifest's test split).
    """
    holder = download_running(root)
    if holder is not None:
        return (
            f"{root} is being written by a running download ({holder}); wait for it to finish, "
            "then read the folder."
        )
    for name in UNFINISHED_NAMES:
        if (root / name).exists():
            return (
                f"{root} holds {name}, left by a download that did not finish; rerun the same "
                "download command to complete it, then read the folder."
            )
    stats = root / STATS_NAME
    if stats.exists() and not (root / MANIFEST_NAME).exists():
        return (
            f"{root} holds {STATS_NAME} but no {MANIFEST_NAME}, so its download did not finish; "
            "rerun the same download command to complete it, then read the folder."
        )
    if _interrupted(stats):
        return (
            f"{root}: its last download was interrupted ({STATS_NAME} says so), so part of the "
            "list is missing; rerun the same download command to finish it, then read the folder."
        )
    return None


def _interrupted(stats: Path) -> bool:
    try:
        return json.loads(stats.read_text(encoding="utf-8")).get("interrupted") is True
    except (OSError, ValueError, AttributeError):
        return False


class TextSink:
    """Minimal text adapter so csv.writer can write UTF-8 into a binary handle."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def write(self, text: str) -> int:
        return self._handle.write(text.encode("utf-8"))
