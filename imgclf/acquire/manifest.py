"""`<out>/manifest.csv`: one row per input URL, written in input order, appended and flushed.

Columns (the contract with the dataset stage, see docs/architecture.md):
`url,label,split,status,reason,path,sha256,width,height,bytes,attempts,duplicate_of`.
`path` is relative to `--out`; `width`/`height` are the upright size (EXIF orientation applied).

Resume: the manifest rows are always a subsequence of the input rows in input order. A run
moves the existing manifest aside (`.manifest.previous.csv`), reads it with a cursor that advances
in step with the input (constant memory), and writes a fresh `manifest.csv`. A run killed
with SIGKILL leaves both files; the next run merges them first (`recover_previous`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imgclf.acquire.layout import MANIFEST_NAME
from imgclf.acquire.reader import UrlRow
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
PREVIOUS_NAME = ".manifest.previous.csv"
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
        """Parse a csv.DictReader record (missing columns read as empty)."""
        values: dict[str, object] = {name: record.get(name) or "" for name in COLUMNS}
        for name in _INT_COLUMNS:
            text = values[name]
            values[name] = int(text) if isinstance(text, str) and text.isdigit() else None
        return cls(**values)  # type: ignore[arg-type]

    def matches(self, row: UrlRow) -> bool:
        """True when this manifest row was written for the input row `row`."""
        return (self.url, self.label, self.split) == (row.url, row.label, row.split)


def read_manifest(path: Path) -> Iterator[ManifestRow]:
    """Stream the rows of a manifest file (no file: no rows)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            yield ManifestRow.from_record(record)


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


class ManifestCursor:
    """Walks a previous manifest in step with the input: `take(row)` returns its old row or None.

    Rows are consumed only when they match, so rows that are missing from the old manifest are
    skipped over; a reordered input simply finds fewer old rows (they are downloaded again).
    """

    def __init__(self, rows: Iterable[ManifestRow]) -> None:
        self._rows = iter(rows)
        self._next = next(self._rows, None)

    def take(self, row: UrlRow) -> ManifestRow | None:
        """The old row for input `row`, or None when the old manifest has none."""
        if self._next is not None and self._next.matches(row):
            found, self._next = self._next, next(self._rows, None)
            return found
        return None

    def rest(self) -> Iterator[ManifestRow]:
        """The old rows not taken yet, in order."""
        if self._next is not None:
            yield self._next
            yield from self._rows
        self._next = None


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
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()


def recover_previous(out: Path, input_rows: Callable[[], Iterable[UrlRow]]) -> Path | None:
    """Set aside the manifest of earlier runs as `.manifest.previous.csv`; return it (or None).

    If both files exist a rerun was killed: its `manifest.csv` holds the newer rows for a prefix
    of the input, the previous file the older ones. They are merged row by row along the input.
    """
    current, previous = out / MANIFEST_NAME, out / PREVIOUS_NAME
    drop_partial_last_line(current)
    drop_partial_last_line(previous)
    if current.exists() and previous.exists():
        newer = ManifestCursor(read_manifest(current))
        older = ManifestCursor(read_manifest(previous))

        def write_merged(handle: IO[bytes]) -> None:
            text = _TextSink(handle)
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(COLUMNS)
            for row in input_rows():
                new, old = newer.take(row), older.take(row)
                if new or old:
                    writer.writerow((new or old).cells())  # type: ignore[union-attr]

        atomic_write(previous, write_merged)
        current.unlink()
    elif current.exists():
        os.replace(current, previous)
    return previous if previous.exists() else None


class _TextSink:
    """Minimal text adapter so csv.writer can write UTF-8 into a binary handle."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def write(self, text: str) -> int:
        return self._handle.write(text.encode("utf-8"))
