"""The decoded-image cache: every image decoded once into a memory-mapped uint8 array.

Decoding JPEGs is what makes two CPU cores the bottleneck of a training epoch, so each image is
decoded (EXIF-transposed RGB, `imgclf.imaging.open_rgb`), its shorter side resized to `side`
and cropped to a `side`×`side` square around the centre, exactly like the eval preset's resize:
the eval preset applied to a cached image gives the same tensor as applied to the original.

Layout: `<cache_dir>/<side>px-<key>/images.npy` (N×side×side×3, uint8, rows in sample order)
and `meta.json` (per-file keys, failures). The key hashes, for every file, its path, sha256,
size and mtime: the content hash where the manifest gives one, plus size and mtime so a file
edited behind the manifest's back is noticed too. Any change makes a new key; rows of unchanged
files are copied from the previous cache instead of decoded again.

Writes are atomic: the cache is built in a temporary folder renamed into place when complete,
so an interrupted build is never used (its leftovers are removed by the next build). A lock
file serialises builders, so two processes of a distributed run build it once. A new cache
supersedes older ones of the same size, except those another process still uses (each user
holds a shared lock on the folder's `.in_use` until it exits): two trainings on different
data may share one cache folder.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, single-process use only
    fcntl = None

from imgclf.dataset.samples import Sample
from imgclf.fileio import TMP_SUFFIX
from imgclf.imaging import open_rgb

CACHE_VERSION = 1
IMAGES = "images.npy"
META = "meta.json"
IN_USE = ".in_use"
# Images per task sent to a decoding process: large enough to amortise the round trip,
# small enough for a smooth progress bar and an even spread over the cores.
CHUNK = 64
# Below this many images to decode, starting processes costs more than it saves.
MIN_PARALLEL = 256

FileKey = tuple[str, str | None, int | None, int | None]  # path, sha256, size, mtime_ns


@dataclass
class ImageCache:
    """A built cache: `images[i]` is sample i as a side×side×3 uint8 array (read-only memmap)."""

    folder: Path
    side: int
    count: int
    failed: dict[int, str]  # sample index → why it could not be decoded (its row is zeros)
    built: bool  # True when this call decoded images, False when it reused a finished cache

    @property
    def images_path(self) -> Path:
        return self.folder / IMAGES

    def open(self) -> np.ndarray:
        """Memory-map the images read-only (cheap; call once per process)."""
        return np.load(self.images_path, mmap_mode="r")


def file_keys(root: Path, samples: Sequence[Sample]) -> list[FileKey]:
    """(path, sha256, size, mtime_ns) per sample; size and mtime None for a missing file."""
    keys: list[FileKey] = []
    for sample in samples:
        try:
            stat = (root / sample.path).stat()
            keys.append((sample.path, sample.sha256, stat.st_size, stat.st_mtime_ns))
        except OSError:
            keys.append((sample.path, sample.sha256, None, None))
    return keys


def cache_key(keys: Sequence[FileKey], side: int, crop: int) -> str:
    """Hash of the cache format, the geometry and every file key."""
    text = json.dumps([CACHE_VERSION, side, crop, [list(key) for key in keys]])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def decode_square(path: str | Path, side: int, crop: int | None = None) -> np.ndarray:
    """Decode `path` as upright RGB, resize the shorter side to `side`, crop a centred square.

    The arithmetic mirrors torchvision's `Resize(side)` (truncated long side). The square's
    offset is chosen so that a later `CenterCrop(crop)` of it picks the very pixels that
    `CenterCrop(crop)` picks from the resized original: two rounded centre crops in a row can
    be one pixel off a single one.
    """
    image = open_rgb(path)
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(side * long / short)
    new_size = (side, new_long) if width <= height else (new_long, side)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BILINEAR)
    crop = crop or side
    left = _centre_offset(new_size[0], crop) - _centre_offset(side, crop)
    top = _centre_offset(new_size[1], crop) - _centre_offset(side, crop)
    return np.asarray(image.crop((left, top, left + side, top + side)), dtype=np.uint8)


def _centre_offset(length: int, crop: int) -> int:
    """First kept pixel of torchvision's `CenterCrop(crop)` on `length` pixels."""
    return round((length - crop) / 2.0)


def load_or_build(
    root: str | Path,
    samples: Sequence[Sample],
    side: int,
    cache_dir: str | Path,
    *,
    crop: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImageCache:
    """The cache of `samples` at `side` px under `cache_dir`: reused when its key matches, else
    built (in parallel over `workers` processes, default: all cores) and renamed into place.

    crop: the eval preset's centre crop (`img_size`), so the cache lines up with it exactly.
    """
    crop = crop or side
    root, cache_dir = Path(root), Path(cache_dir)
    keys = file_keys(root, samples)
    folder = cache_dir / f"{side}px-{cache_key(keys, side, crop)}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".lock"):
        if (folder / META).is_file():
            _hold_in_use(folder)
            return _open_finished(folder, built=False)
        _remove_leftovers(cache_dir)
        previous = _previous_rows(cache_dir, side, crop)
        tmp = cache_dir / f".{folder.name}.{os.getpid()}{TMP_SUFFIX}"
        tmp.mkdir()
        try:
            failed = _fill(tmp / IMAGES, root, keys, (side, crop), previous, workers, progress)
            meta = {
                "version": CACHE_VERSION,
                "side": side,
                "crop": crop,
                "count": len(keys),
                "files": [list(key) for key in keys],
                "failed": {str(index): reason for index, reason in sorted(failed.items())},
            }
            (tmp / META).write_text(json.dumps(meta), encoding="utf-8")
            _fsync(tmp, *tmp.iterdir())
            os.replace(tmp, folder)
            _fsync(cache_dir)  # make the rename itself durable
            _hold_in_use(folder)
        except BaseException:
            # Ctrl-C or an error: leave nothing behind (a hard kill leaves `tmp`, which the next
            # build removes).
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Older caches of the same size are superseded; other sizes stay (e.g. 96 and 224 px),
        # and so do caches that a running training still reads.
        for other in cache_dir.glob(f"{side}px-*"):
            if other != folder:
                _remove_unless_in_use(other)
        return _open_finished(folder, built=True)


def _open_finished(folder: Path, *, built: bool) -> ImageCache:
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    failed = {int(index): reason for index, reason in meta["failed"].items()}
    return ImageCache(folder, meta["side"], meta["count"], failed, built)


def _previous_rows(cache_dir: Path, side: int, crop: int) -> dict[FileKey, tuple[Path, int]]:
    """File key → (images.npy, row) of decoded rows in earlier finished caches of this side."""
    rows: dict[FileKey, tuple[Path, int]] = {}
    for folder in sorted(cache_dir.glob(f"{side}px-*")):
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("version") != CACHE_VERSION or meta.get("crop") != crop:
            continue
        failed = set(meta["failed"])
        for index, key in enumerate(meta["files"]):
            if str(index) not in failed and key[2] is not None:
                rows[tuple(key)] = (folder / IMAGES, index)
    return rows


def _fill(
    images_path: Path,
    root: Path,
    keys: Sequence[FileKey],
    geometry: tuple[int, int],
    previous: dict[FileKey, tuple[Path, int]],
    workers: int | None,
    progress: bool,
) -> dict[int, str]:
    """Write every row of a new images.npy; returns {index: reason} for undecodable files."""
    side = geometry[0]
    images = np.lib.format.open_memmap(
        images_path, mode="w+", dtype=np.uint8, shape=(len(keys), side, side, 3)
    )
    todo: list[int] = []
    reused_from: dict[Path, list[tuple[int, int]]] = {}
    for index, key in enumerate(keys):
        if key in previous:
            source, row = previous[key]
            reused_from.setdefault(source, []).append((index, row))
        else:
            todo.append(index)
    for source, pairs in reused_from.items():
        old = np.load(source, mmap_mode="r")
        for index, row in pairs:
            images[index] = old[row]
    images.flush()
    del images

    paths = [(index, str(root / keys[index][0])) for index in todo]
    workers = workers or _available_cores()
    chunks = [paths[start : start + CHUNK] for start in range(0, len(paths), CHUNK)]
    bar = _progress_bar(len(paths), side, progress)
    failed: dict[int, str] = {}
    try:
        if workers > 1 and len(paths) >= MIN_PARALLEL:
            with _decoding_pool(workers) as pool:
                futures = {
                    pool.submit(_decode_chunk, str(images_path), geometry, chunk): len(chunk)
                    for chunk in chunks
                }
                for future in as_completed(futures):
                    failed.update(future.result())
                    bar.update(futures[future])
        else:
            for chunk in chunks:
                failed.update(_decode_chunk(str(images_path), geometry, chunk))
                bar.update(len(chunk))
    finally:
        bar.close()
    return failed


def _decode_chunk(
    images_path: str, geometry: tuple[int, int], chunk: list[tuple[int, str]]
) -> dict[int, str]:
    """Decode `chunk` [(row, file)] into the rows of the memmapped images; failures by row."""
    images = np.load(images_path, mmap_mode="r+")
    failed: dict[int, str] = {}
    for index, path in chunk:
        try:
            images[index] = decode_square(path, *geometry)
        except FileNotFoundError:
            failed[index] = f"missing file {path}"
        except Exception as error:  # any undecodable file is one row with a reason
            failed[index] = f"cannot decode {path}: {type(error).__name__}: {error}"
    images.flush()
    return failed


def _progress_bar(total: int, side: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"caching images at {side}px", unit="img", disable=not enabled)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _decoding_pool(workers: int) -> Executor:
    """Processes forked like DataLoader workers on Linux (they only run Pillow and numpy, so
    the parent's torch threads don't matter, and unlike spawn nothing re-imports `__main__`).
    Elsewhere, and inside daemonic processes that may not have children, threads: Pillow
    releases the GIL while decoding and resizing."""
    daemon = multiprocessing.current_process().daemon
    if sys.platform == "linux" and not daemon:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def _remove_leftovers(cache_dir: Path) -> None:
    """Delete folders of interrupted builds (only called under the lock, so none is live)."""
    for leftover in cache_dir.glob(f".*{TMP_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)


# Shared locks on the `.in_use` files of the caches this process uses, held until it exits
# (forked DataLoader workers share them).
_HELD: dict[Path, IO[str]] = {}


def _hold_in_use(folder: Path) -> None:
    """Mark `folder` as used by this process (called under the cache_dir lock)."""
    if fcntl is not None and folder not in _HELD:
        handle = (folder / IN_USE).open("a")
        fcntl.flock(handle, fcntl.LOCK_SH)
        _HELD[folder] = handle


def _remove_unless_in_use(folder: Path) -> None:
    """Delete the superseded cache `folder` unless another process holds its `.in_use`."""
    own = _HELD.pop(folder, None)
    if own is not None:
        own.close()  # this process moves on to the new cache itself
    if fcntl is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    try:
        with (folder / IN_USE).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(folder, ignore_errors=True)
    except BlockingIOError:
        return  # a running training reads it; the next build after it ends removes it
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)  # e.g. a half-deleted folder


def _fsync(*paths: Path) -> None:
    """Flush files and folders (their entries) to disk; folders are skipped where unsupported."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # e.g. folders on Windows
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (POSIX); a no-op where fcntl is missing."""
    if fcntl is None:
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
