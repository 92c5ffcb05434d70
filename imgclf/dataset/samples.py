"""Which labelled images a data root holds: `read_samples(root)` → (classes, samples).

Two layouts, checked in this order:
1. `<root>/manifest.csv` written by the downloader, read through the downloader's own reader:
   its `ok` rows (`path`, `label`, `split`, `sha256`); `failed` and `duplicate` rows are skipped.
2. `<root>/<label>/<image>` folders, like torchvision's ImageFolder and timm's
   `reader_image_folder`: sorted class names, sorted files, hidden files and folders ignored.

A folder that shows an unfinished download (one running, or a run that did not finish) is
refused: it would be read as part of the data, or, without its manifest, as plain class folders
that silently put the manifest's test split into training.

No torch here: reading a folder is cheap and used by light tools too.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imgclf.acquire.layout import MANIFEST_NAME as MANIFEST
from imgclf.acquire.manifest import read_manifest, unfinished_download
from imgclf.acquire.reasons import OK
from imgclf.errors import InputError
from imgclf.imaging import IMAGE_SUFFIXES

MANIFEST_COLUMNS = ("label", "split", "status", "path", "sha256")


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    path:   relative to the data root, with forward slashes.
    label:  class name.
    sha256: hex digest of the file's bytes: from the manifest when there is one, else computed
            while reading the folder (it keeps identical images in the same split part).
    split:  the manifest's `split` value ("test", ...) or None.
    """

    path: str
    label: str
    sha256: str | None
    split: str | None = None


def read_samples(root: str | Path) -> tuple[list[str], list[Sample]]:
    """Sorted class names and the samples of `root` (manifest rows or `<label>/*` files).

    Raises InputError naming the folder or file when the folder is missing, holds no images,
    a class has no images, or there are fewer than two classes.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(
            f"Data folder {root} is a file, not a folder; set data.root to the folder that "
            "holds manifest.csv or the <label>/ folders."
        )
    if not root.is_dir():
        raise InputError(
            f"Data folder {root} does not exist; download images first "
            "(python utils/download_data.py) or set data.root to a folder of <label>/ folders."
        )
    unfinished = unfinished_download(root)
    if unfinished is not None:
        raise InputError(unfinished)
    manifest = root / MANIFEST
    samples = _read_manifest(manifest) if manifest.is_file() else _read_folders(root)
    classes = sorted({sample.label for sample in samples})
    if len(classes) < 2:
        where = manifest if manifest.is_file() else root
        raise InputError(
            f"{where} has images of {len(classes)} class ({', '.join(classes)}); "
            "a classifier needs at least two classes, add images of another class."
        )
    return classes, samples


def image_files(folder: Path) -> list[Path]:
    """Image files below `folder` (any depth), sorted; hidden files and folders are skipped."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _read_folders(root: Path) -> list[Sample]:
    class_dirs = sorted(
        entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if not class_dirs:
        raise InputError(
            f"Data folder {root} has no class folders and no {MANIFEST}; "
            "put the images of each class in <root>/<label>/."
        )
    files: list[tuple[str, str]] = []  # (relative path, label)
    for class_dir in class_dirs:
        images = image_files(class_dir)
        if not images:
            raise InputError(
                f"Class folder {class_dir} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "add images or remove the folder."
            )
        files += [(path.relative_to(root).as_posix(), class_dir.name) for path in images]
    digests = hash_files([root / path for path, _ in files])
    return [
        Sample(path=path, label=label, sha256=digest)
        for (path, label), digest in zip(files, digests, strict=True)
    ]


def _read_manifest(manifest: Path) -> list[Sample]:
    samples: list[Sample] = []
    labels_seen: Counter[str] = Counter()
    seen_paths: dict[str, int] = {}  # path → line of its first 'ok' row
    rows = 0
    for line, row in read_manifest(manifest, required=MANIFEST_COLUMNS):
        rows += 1
        labels_seen[row.label] += 1
        if row.status != OK:
            continue
        if not row.path or not row.label:
            raise InputError(
                f"{manifest} line {line} is an 'ok' row without a path or label; "
                "re-run the download or fix the row."
            )
        path = PurePosixPath(row.path)
        if path.is_absolute() or ".." in path.parts:
            raise InputError(
                f"{manifest} line {line} has path {row.path!r}, which leaves the data folder; "
                "paths must be relative to the folder that holds manifest.csv."
            )
        if row.path in seen_paths:
            raise InputError(
                f"{manifest} line {line} lists {row.path!r} again (first on line "
                f"{seen_paths[row.path]}); keep one 'ok' row per file."
            )
        seen_paths[row.path] = line
        samples.append(Sample(row.path, row.label, row.sha256 or None, row.split or None))
    if not samples:
        raise InputError(
            f"{manifest} has no 'ok' rows ({rows} rows in all); "
            "check download_stats.json for why the downloads failed."
        )
    ok_labels = {sample.label for sample in samples}
    for label in sorted(set(labels_seen) - ok_labels):
        raise InputError(
            f"{manifest} has no 'ok' row for class {label!r} (all {labels_seen[label]} failed or "
            "duplicate); fix its URLs or remove the class from the URL list."
        )
    return sorted(samples, key=lambda sample: sample.path)


def hash_files(paths: list[Path], workers: int | None = None) -> list[str]:
    """sha256 hex digests of `paths` (threads: hashlib and file reads release the GIL)."""
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_sha256_of, paths))


def _sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
