"""Stream `(url, label, split)` rows out of URL lists, one at a time, in a stable order.

Accepted inputs (`--urls` is a file or a folder of such files; each may be gzip-compressed `.gz`):

- `.csv` / `.tsv`: a header with `url` and `label`, optional `split`; other columns are ignored;
- `.jsonl` / `.ndjson`: one JSON object per line with the same keys;
- `<label>.txt`: one URL per line, the label is the file name; blank lines and `#` comments
  are skipped.

A folder is read file by file in sorted name order. Nothing is loaded whole: a list of a million
URLs costs the memory of one row. A malformed input raises InputError naming the file and line;
`scan_urls` runs the whole check once before any download starts.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from imgclf.acquire.labels import LabelFolders
from imgclf.errors import InputError

TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_SUFFIX = ".txt"
SUFFIXES = (*TABLE_DELIMITERS, *JSONL_SUFFIXES, TEXT_SUFFIX)


@dataclass(frozen=True)
class UrlRow:
    """One input row; `index` is its position over the whole input, `where` is `file:line`."""

    index: int
    url: str
    label: str
    split: str
    where: str


@dataclass(frozen=True)
class InputSummary:
    """What the validation pass learned: row count and label -> folder names."""

    rows: int
    folders: dict[str, str]


def list_input_files(path: Path) -> list[Path]:
    """The URL list files under `path` (itself if a file), sorted; InputError if there are none."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; pass --urls with a URL list.")
    if path.is_file():
        if _format_suffix(path) is None:
            raise InputError(f"{path}: unknown list format; use one of {', '.join(SUFFIXES)}.")
        return [path]
    files = sorted(
        child
        for child in path.iterdir()
        if child.is_file() and not child.name.startswith(".") and _format_suffix(child)
    )
    if not files:
        raise InputError(f"{path}: no URL lists in this folder (expected {', '.join(SUFFIXES)}).")
    return files


def iter_url_rows(path: Path) -> Iterator[UrlRow]:
    """Every row of every list under `path`, in order, numbered from 0."""
    index = 0
    for file in list_input_files(path):
        for url, label, split, line in _iter_file(file):
            yield UrlRow(index, url, label, split, f"{file}:{line}")
            index += 1


def scan_urls(path: Path) -> InputSummary:
    """Read the whole input once (streamed) and raise InputError on the first malformed row."""
    return summarize(iter_url_rows(path), f"{path}: the input holds no URLs.")


def summarize(rows: Iterable[UrlRow], when_empty: str) -> InputSummary:
    """Count `rows` and give every label its folder; InputError(`when_empty`) if there are none."""
    folders = LabelFolders()
    count = 0
    for row in rows:
        folders.folder(row.label, row.where)
        count += 1
    if count == 0:
        raise InputError(when_empty)
    return InputSummary(count, {label: folders.folder(label) for label in folders.labels()})


def _format_suffix(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes and suffixes[-1] in SUFFIXES else None


def _open_text(path: Path) -> io.TextIOBase:
    try:
        raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")  # noqa: SIM115
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror}); check the path.") from None
    # utf-8-sig: spreadsheets often start CSV files with a byte order mark.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _iter_file(path: Path) -> Iterator[tuple[str, str, str, int]]:
    """(url, label, split, line number) for each row of one file."""
    suffix = _format_suffix(path)
    with _open_text(path) as handle:
        try:
            if suffix in TABLE_DELIMITERS:
                yield from _iter_table(path, handle, TABLE_DELIMITERS[suffix])
            elif suffix in JSONL_SUFFIXES:
                yield from _iter_jsonl(path, handle)
            else:
                yield from _iter_label_file(path, handle)
        except UnicodeDecodeError:
            raise InputError(f"{path}: is not UTF-8 text; save it as UTF-8.") from None
        except csv.Error as error:
            raise InputError(f"{path}: is not valid CSV/TSV ({error}); fix the file.") from None
        except (OSError, EOFError) as error:
            raise InputError(f"{path}: cannot be read ({error}); check the file.") from None


def _iter_table(path: Path, handle: io.TextIOBase, delimiter: str):
    reader = csv.reader(handle, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise InputError(f"{path}:1: empty file; expected a header with url and label.")
    columns = {name.strip().lower(): position for position, name in enumerate(header)}
    missing = [name for name in ("url", "label") if name not in columns]
    if missing:
        raise InputError(
            f"{path}:1: the header has no {' or '.join(missing)} column "
            f"(found: {', '.join(header)}); add it."
        )
    url_at, label_at, split_at = columns["url"], columns["label"], columns.get("split")
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        line = reader.line_num

        def cell(position: int | None, cells: list[str] = cells) -> str:
            if position is None or position >= len(cells):
                return ""
            return cells[position].strip()

        label = cell(label_at)
        if not label:
            raise InputError(f"{path}:{line}: empty label; every row needs a label.")
        yield cell(url_at), label, cell(split_at), line


def _iter_jsonl(path: Path, handle: io.TextIOBase):
    for line, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{line}: invalid JSON ({error.msg}); fix the line.") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{line}: expected a JSON object with url and label.")
        missing = [key for key in ("url", "label") if key not in record]
        if missing:
            raise InputError(f"{path}:{line}: no {' or '.join(missing)} key; add it.")
        label = str(record["label"] or "").strip()
        if not label:
            raise InputError(f"{path}:{line}: empty label; every row needs a label.")
        split = record.get("split") or ""
        yield str(record["url"] or "").strip(), label, str(split).strip(), line


def _iter_label_file(path: Path, handle: io.TextIOBase):
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    label = name[: -len(TEXT_SUFFIX)].strip()
    if not label:
        raise InputError(f"{path}: the file name gives no label; name it <label>.txt.")
    for line, text in enumerate(handle, start=1):
        url = text.strip()
        if url and not url.startswith("#"):
            yield url, label, "", line
