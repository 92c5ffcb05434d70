"""`--import`: bring in images someone already downloaded (zip, tar, or a folder).

Every file at `<anything>/<label>/<image>` becomes one input row: the label is its parent folder,
the `url` column a `file://` URI (for archives `file:///abs/archive.zip#member/path`), so keys,
manifest and resume work exactly as for downloads. The bytes then go through the same
validation, dedup and layout. Files at the top level (no label folder), hidden files and
`__MACOSX` entries are skipped.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath

from imgclf.acquire.reader import InputSummary, UrlRow, summarize
from imgclf.errors import InputError

# Bytes of a member, or None when it is larger than the cap (then it is not even read).
Member = tuple[UrlRow, bytes | None]
# (member path inside the source, label, size in bytes, read the bytes)
_Entry = tuple[str, str, int, Callable[[], bytes]]


def scan_import(source: Path) -> InputSummary:
    """Validate labels and count members without reading any image bytes."""
    when_empty = f"{source}: no <label>/<image> files found; check the archive layout."
    return summarize(import_rows(source), when_empty)


def import_rows(source: Path) -> Iterator[UrlRow]:
    """The rows of an import, without bytes (for the scan and for merging manifests)."""
    for row, _size, _read in _rows(source):
        yield row


def iter_import(source: Path, max_bytes: int) -> Iterator[Member]:
    """Rows with their bytes, read sequentially (a compressed tar cannot seek cheaply)."""
    for row, size, read in _rows(source):
        yield row, (None if size > max_bytes else read())


def _rows(source: Path) -> Iterator[tuple[UrlRow, int, Callable[[], bytes]]]:
    base = source.resolve()
    for index, (member, label, size, read) in enumerate(_walk(source)):
        url = (base / member).as_uri() if source.is_dir() else f"{base.as_uri()}#{member}"
        yield UrlRow(index, url, label, "", f"{source}:{member}"), size, read


def _walk(source: Path) -> Iterator[_Entry]:
    """Every image candidate with its label, in a stable order."""
    if not source.exists():
        raise InputError(f"{source}: no such file or folder; pass --import an archive or folder.")
    if source.is_dir():
        yield from _walk_folder(source)
    elif zipfile.is_zipfile(source):
        yield from _walk_zip(source)
    elif tarfile.is_tarfile(source):
        yield from _walk_tar(source)
    else:
        raise InputError(f"{source}: not a zip or tar archive or a folder; check the file.")


def _label_of(member: str) -> str | None:
    parts = PurePosixPath(member).parts
    if len(parts) < 2 or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return parts[-2]


def _walk_folder(source: Path) -> Iterator[_Entry]:
    for directory, subdirs, files in os.walk(source):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            member = path.relative_to(source).as_posix()
            label = _label_of(member)
            if label is not None:
                yield member, label, path.stat().st_size, path.read_bytes


def _walk_zip(source: Path) -> Iterator[_Entry]:
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                label = _label_of(info.filename)
                if not info.is_dir() and label is not None:
                    yield info.filename, label, info.file_size, partial(archive.read, info)
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{source}: cannot read the zip archive ({error}).") from None


def _walk_tar(source: Path) -> Iterator[_Entry]:
    try:
        # "r|*" streams members in archive order: a .tar.gz is decompressed once, not per file.
        with tarfile.open(source, "r|*") as archive:
            for info in archive:
                label = _label_of(info.name)
                if info.isfile() and label is not None:
                    yield info.name, label, info.size, partial(_read_tar_member, archive, info)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise InputError(f"{source}: cannot read the tar archive ({error}).") from None


def _read_tar_member(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(info)
    return handle.read() if handle else b""
