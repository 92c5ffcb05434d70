"""`--import`: bring in images someone already downloaded (zip, tar, or a folder).

Every file at `<anything>/<label>/<image>` becomes one input row: the label is its parent folder,
the `url` column a `file://` URI (for archives `file:///abs/archive.zip#member/path`), so keys,
manifest and resume work exactly as for downloads. The bytes then go through the same
validation, dedup and layout. Files at the top level (no label folder), hidden files and
`__MACOSX` entries are skipped, and so is anything in a folder that is not a regular file (a FIFO
would block the import forever, a device would stream without end).

Members are read in chunks and counted as they inflate: `--max-bytes` holds for the real size,
not only the size an archive declares. A member that cannot be read (bad CRC, I/O error) becomes
a row with reason `unreadable`; the import goes on.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from imgclf.acquire.reader import InputSummary, UrlRow, summarize, url_row
from imgclf.errors import InputError

TOO_LARGE = "too_large"
UNREADABLE = "unreadable"
_CHUNK = 1024 * 1024
# A member: its bytes, or None and the reason it has none (too large, unreadable).
Member = tuple[UrlRow, bytes | None, str]
# Opens a member for reading in chunks.
Opener = Callable[[], IO[bytes]]
# (member path inside the source, label, declared size in bytes, open it)
_Entry = tuple[str, str, int, Opener]


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
    for row, size, opener in _rows(source):
        if size > max_bytes:
            yield row, None, TOO_LARGE
            continue
        data, reason = read_capped(opener, max_bytes)
        yield row, data, reason


def read_capped(opener: Opener, max_bytes: int) -> tuple[bytes | None, str]:
    """The bytes of a member read in chunks, or (None, reason) once more than `max_bytes` came
    out of it or it cannot be read."""
    chunks, size = [], 0
    try:
        with opener() as handle:
            while chunk := handle.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    return None, TOO_LARGE
                chunks.append(chunk)
    except (
        OSError,
        EOFError,
        zipfile.BadZipFile,
        tarfile.TarError,
        zlib.error,
        ValueError,
        RuntimeError,  # an encrypted zip member
        NotImplementedError,  # a compression method zipfile does not know
    ):
        # A bad CRC, a broken compressed stream, an I/O error or a file that changed into
        # something else than a regular file: this member fails, the import goes on.
        return None, UNREADABLE
    return b"".join(chunks), ""


def _rows(source: Path) -> Iterator[tuple[UrlRow, int, Opener]]:
    base = source.resolve()
    for index, (member, label, size, read) in enumerate(_walk(source)):
        url = (base / member).as_uri() if source.is_dir() else f"{base.as_uri()}#{member}"
        yield url_row(index, url, label, "", f"{source}:{member}"), size, read


def _walk(source: Path) -> Iterator[_Entry]:
    """Every image candidate with its label, in a stable order."""
    if not source.exists():
        raise InputError(f"{source}: no such file or folder; pass --import an archive or folder.")
    if source.is_dir():
        yield from _walk_folder(source)
    elif not source.is_file():  # a FIFO or a device: reading it could block or never end
        raise InputError(f"{source}: not a regular file or folder; pass an archive or a folder.")
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
            if label is None:
                continue
            try:
                info = path.stat()  # follows a symbolic link to what it names
            except OSError:
                continue  # a dangling link
            if stat.S_ISREG(info.st_mode):
                yield member, label, info.st_size, partial(_open_regular, path)


def _open_regular(path: Path) -> IO[bytes]:
    """Open `path` without ever blocking; OSError if it is no longer a regular file.

    O_NONBLOCK: a FIFO swapped in after the scan must not hang the import on open.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _walk_zip(source: Path) -> Iterator[_Entry]:
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                label = _label_of(info.filename)
                if not info.is_dir() and label is not None and _zip_regular(info):
                    yield info.filename, label, info.file_size, partial(archive.open, info)
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{source}: cannot read the zip archive ({error}).") from None


def _walk_tar(source: Path) -> Iterator[_Entry]:
    try:
        # "r|*" streams members in archive order: a .tar.gz is decompressed once, not per file.
        with tarfile.open(source, "r|*") as archive:
            for info in archive:
                label = _label_of(info.name)
                if info.isfile() and label is not None:
                    yield info.name, label, info.size, partial(_open_tar_member, archive, info)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise InputError(f"{source}: cannot read the tar archive ({error}).") from None


def _zip_regular(info: zipfile.ZipInfo) -> bool:
    """False for members stored as symbolic links (or other special files) by Unix zip."""
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the writer recorded no file type
    return kind in (0, stat.S_IFREG)


def _open_tar_member(archive: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    handle = archive.extractfile(info)
    if handle is None:
        raise OSError(f"{info.name} is not a regular file")
    return handle
