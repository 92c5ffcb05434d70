"""Checks of a run's output folders made before epoch 1, so a mistake that can be known at the
start is not found after the last epoch, when the export fails and the epochs are lost."""

from __future__ import annotations

import tempfile
from pathlib import Path

from imgclf.errors import InputError


def nearest_existing(path: Path) -> Path:
    """`path`, or the closest of its parents that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: Path, what: str, key: str) -> None:
    """Raise InputError unless files can be created in `folder` (made later if missing).

    Probes with a real file instead of `os.access`, which says yes to root even on a read-only
    mount; creates no folder, so a run stopped early leaves nothing behind.
    """
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise InputError(
            f"The {what} folder {folder} can't be created: {existing} is a file; "
            f"set {key} to a path inside a folder."
        )
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".imgclf-write-check-"):
            pass
    except OSError as error:
        raise InputError(
            f"The {what} folder {folder} is not writable ({error.strerror} in {existing}); "
            f"set {key} to a writable folder."
        ) from None


def check_output_folders(
    *, logdir: Path, weights: Path, picture: Path, cache_dir: Path | None
) -> None:
    """Every folder the run writes to accepts files: logdir, weights, picture and cache."""
    check_writable_folder(logdir, "log", "args.logdir (or --logdir)")
    check_writable_folder(weights.parent, "weights", "export.weights")
    check_writable_folder(picture.parent, "picture", "export.picture")
    if cache_dir is not None:
        check_writable_folder(cache_dir, "cache", "data.cache_dir")
