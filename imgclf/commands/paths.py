"""Checks of output paths named on a command line, made before any long work starts.

A report or export that fails to write after minutes of evaluation wastes the minutes and ends
in a traceback; probing the target first turns it into one sentence and exit code 2.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from imgclf.errors import InputError
from imgclf.fileio import TMP_SUFFIX


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
