"""Stream `(url, label, split)` rows out of URL lists, one at a time, in a stable order.

Accepted inputs (`--urls` is a file or a folder of such files; each may be gzip-compressed `.gz`):

- `.csv` / `.tsv`: a header with `url` and `label`, optional `split`; other columns are ignored;
- `.jsonl` / `.ndjson`: one JSON object per line with the same keys;
- `<label>.txt`: one URL per line, the label is the file name; blank lines and `#` comments
  are skipped.

A folder is read file by file in sorted name order. Nothing is loaded whole: a list of a million
URLs costs the memory of one row. A malformed input raises InputError naming the file and line;
`scan_urls` runs the whole check once before any download starts.

Every row is bounded here, for every format, so a manifest row stays small enough for any CSV
reader: a URL longer than MAX_URL_LENGTH (a scraped `data:` URL of 100 KB is common) becomes a
row with reason `url_too_long` and a shortened URL; an over-long label or split is bad input.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
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
MAX_URL_LENGTH = 8192  # characters; browsers and servers refuse longer ones too
MAX_LABEL_LENGTH = 1000
MAX_SPLIT_LENGTH = 100
_SHOWN_URL_PREFIX = 200
# Fields up to this size are read (csv's default 128 KiB would stop at one long URL).
CSV_FIELD_LIMIT = 16 * 1024 * 1024
URL_TOO_LONG = "url_too_long"


@dataclass(frozen=True)
class UrlRow:
    """One input row; `index` is its position over the whole input, `where` is `file:line`."""

    index: int
    url: str
    label: str
    split: str
    where: str
    reason: str = ""  # set when the row is refused as read (e.g. url_too_long)


@dataclass(frozen=True)
class InputSummary:
    """What the validation pass learned: row count and label -> folder names."""

    rows: int
    folders: dict[str, str]


def url_row(index: int, url: str, label: str, split: str, where: str) -> UrlRow:
    """One bounded input row: a too-long URL is refused with a reason, a too-long label is bad."""
    for name, text in (("label", label), ("split", split)):
        if not _encodable(text):
            raise InputError(f"{where}: the {name} {text!r} is not valid Unicode text; fix it.")
    if not _encodable(url):  # a lone surrogate from a JSON escape: no file can hold it as UTF-8
        return UrlRow(index, url.encode("utf-8", "backslashreplace").decode(), label, split,
                      where, "invalid_url")  # fmt: skip
    if len(label) > MAX_LABEL_LENGTH:
        raise InputError(
            f"{where}: the label is {len(label):,} characters long (at most "
            f"{MAX_LABEL_LENGTH:,}); shorten it."
        )
    if len(split) > MAX_SPLIT_LENGTH:
        raise InputError(
            f"{where}: the split value is {len(split):,} characters long (at most "
            f"{MAX_SPLIT_LENGTH}); use a short name such as test."
        )
    if len(url) > MAX_URL_LENGTH:
        return UrlRow(index, shortened_url(url), label, split, where, URL_TOO_LONG)
    return UrlRow(index, url, label, split, where)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shortened_url(url: str) -> str:
    """A stand-in for an over-long URL: its start, its length and a digest (stable per URL)."""
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]
    return f"{url[:_SHOWN_URL_PREFIX]}...[{len(url)} characters, sha1 {digest}]"


def list_input_files(path: Path, ignore: frozenset[Path] = frozenset()) -> list[Path]:
    """The URL list files under `path` (itself if a file), sorted; InputError if there are none.

    Files in `ignore` (resolved paths: the run's own manifest) are never read as lists.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; pass --urls with a URL list.")
    if not path.is_file() and not path.is_dir():  # a FIFO or device: read twice, or never ends
        raise InputError(f"{path}: not a regular file or folder; save the URL list to a file.")
    if path.is_file():
        if _format_suffix(path) is None:
            raise InputError(f"{path}: unknown list format; use one of {', '.join(SUFFIXES)}.")
        return [path]
    files = sorted(
        child
        for child in path.iterdir()
        if child.is_file()
        and not child.name.startswith(".")
        and _format_suffix(child)
        and child.resolve() not in ignore
    )
    if not files:
        raise InputError(f"{path}: no URL lists in this folder (expected {', '.join(SUFFIXES)}).")
    return files


def iter_url_rows(path: Path, ignore: frozenset[Path] = frozenset()) -> Iterator[UrlRow]:
    """Every row of every list under `path` (but `ignore`), in order, numbered from 0."""
    index = 0
    for file in list_input_files(path, ignore):
        for url, label, split, line in _iter_file(file):
            yield url_row(index, url, label, split, f"{file}:{line}")
            index += 1


def scan_urls(path: Path, ignore: frozenset[Path] = frozenset()) -> InputSummary:
    """Read the whole input once (streamed) and raise InputError on the first malformed row."""
    return summarize(iter_url_rows(path, ignore), f"{path}: the input holds no URLs.")


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


def long_field_csv_reader(lines: Iterable[str], delimiter: str) -> Iterator[list[str]]:
    """`csv.reader` over `lines` that reads fields up to CSV_FIELD_LIMIT characters.

    The limit is process-wide in the csv module, so it is raised here, where the downloader's
    own tables are read, rather than as a side effect of importing this module.
    """
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    return csv.reader(lines, delimiter=delimiter)


def _iter_table(path: Path, handle: io.TextIOBase, delimiter: str):
    reader = long_field_csv_reader(handle, delimiter)
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
