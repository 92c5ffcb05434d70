"""Where things live under `--out`: file names derived from the URL alone, staging, cleanup.

`<out>/<label folder>/<key>.<ext>` with `key` = the first 16 hex digits of SHA-1(url): a rerun or a
resume names every file the same way without any state. A download is first staged as
`.<key>.<random>.tmp` in its target folder and renamed when its manifest row is committed, so a
visible image is always complete; `remove_stale_temporaries` clears what a killed run left.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from imgclf.fileio import TMP_SUFFIX
from imgclf.imaging import EXTENSIONS

MANIFEST_NAME = "manifest.csv"
STATS_NAME = "download_stats.json"
LOCK_NAME = ".download.lock"
PARTIAL_NAME = ".manifest.partial.csv"  # the rows of the run in progress
SHARDS_NAME = ".shards"  # the state of a distributed run in progress (acquire/shards.py)
# Names of the downloader's own files: no label folder may take one (compared case-folded).
RESERVED_NAMES = frozenset(name.casefold() for name in (MANIFEST_NAME, STATS_NAME, LOCK_NAME))


def url_key(url: str) -> str:
    """16 hex digits of SHA-1(url): stable across runs, practically collision-free per list."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def relative_path(folder: str, key: str, ext: str) -> str:
    """`<folder>/<key>.<ext>`, relative to `--out`, always with forward slashes."""
    return f"{folder}/{key}.{ext}"


def stage_file(directory: Path, key: str, data: bytes) -> Path:
    """Write `data` to a fresh temporary file in `directory` and return its path."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:  # a full disk must not leave half a file behind
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def candidate_paths(out: Path, folder: str, key: str) -> list[Path]:
    """Every path an image of this URL could have, one per accepted extension."""
    return [out / relative_path(folder, key, ext) for ext in sorted(set(EXTENSIONS.values()))]


def remove_stale_temporaries(out: Path) -> int:
    """Delete `*.tmp` files in `out` and its label folders (left by a killed run); count them."""
    removed = 0
    if not out.is_dir():
        return removed
    folders = [out, *(entry for entry in out.iterdir() if entry.is_dir())]
    for folder in folders:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX):
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
    return removed
