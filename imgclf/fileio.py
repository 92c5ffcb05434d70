"""Atomic file writes: nothing half-written is ever visible under the final name.

Write to a temporary file in the target folder (same filesystem, so `os.replace` is atomic),
fsync, then rename. An interrupted run leaves at most a `*.tmp` file, which readers ignore.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from imgclf.errors import InputError

TMP_SUFFIX = ".tmp"


def _default_file_mode() -> int:
    """0o666 minus the process umask: the mode `open()` would have given a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# Read once: os.umask can only be read by setting it, which is not thread-safe at write time.
_FILE_MODE = _default_file_mode()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(fileobj)` on a temporary file next to `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        # mkstemp creates the file 0600; give it the usual mode so others can read reports.
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable_folder(folder: str | Path, option: str) -> Path:
    """InputError unless files can be created in `folder` (made if missing); returns it.

    Called before long work whose result goes there, so a read-only folder is found at the
    start, not after it. Probing with a real file is the only honest test (permission bits
    say nothing on a read-only mount, nor for root).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file, not a folder; pass a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise InputError(
            f"{option} {folder} is not writable ({error.strerror}); pass a writable folder."
        ) from None
    return folder


def check_writable_file(path: str | Path, option: str) -> Path:
    """InputError unless `path` can be written as a file: not a folder, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; pass the path of a file.")
    check_writable_folder(path.parent, option)
    return path
