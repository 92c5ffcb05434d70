"""The demo's URL list: every bundled image, a seeded stratified test split, a few broken URLs.

The split is decided here, in the URL list, because that is where a user's own data would carry
it (`split` column); the training stage keeps `test` rows out and splits the rest into
train / valid itself.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from imgclf.errors import InputError
from imgclf.fileio import atomic_write_text
from imgclf.imaging import IMAGE_SUFFIXES

URL_LIST_COLUMNS = ("url", "label", "split")


@dataclass(frozen=True)
class DemoUrl:
    """One line of the URL list; `path` is the URL path on the demo server (starts with `/`)."""

    path: str
    label: str
    split: str


@dataclass(frozen=True)
class BrokenSample:
    """A URL that must fail validation, and the body the server returns for it (None: 404)."""

    path: str
    body: bytes | None
    content_type: str
    expected_reason: str


def list_images(root: Path) -> dict[str, list[Path]]:
    """Map each class folder under `root` to its image files, both sorted (deterministic)."""
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; point --data at a folder of <label>/ folders.")
    classes = {
        folder.name: sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
    }
    classes = {label: files for label, files in classes.items() if files}
    if len(classes) < 2:
        raise InputError(
            f"{root} holds images in {len(classes)} class folder(s); the demo needs at least two "
            "<label>/ folders with images."
        )
    return classes


def stratified_rows(
    images: dict[str, list[Path]],
    root: Path,
    *,
    test_fraction: float,
    seed: int,
    per_class: int | None = None,
) -> list[DemoUrl]:
    """One row per image; in each class a seeded `test_fraction` of the images gets split=test.

    With `per_class`, each class first keeps a seeded sample of that many images (quick runs).
    The same inputs always give the same rows in the same order.
    """
    if not 0 < test_fraction < 1:
        raise InputError(f"--test-fraction {test_fraction} must be between 0 and 1 (exclusive).")
    if per_class is not None and per_class < 2:
        raise InputError(f"--per-class {per_class} must be at least 2 (one train, one test).")
    rows: list[DemoUrl] = []
    for label, files in images.items():
        # One generator per class, seeded by the label too: adding a class leaves the others as is.
        rng = random.Random(f"{seed}:{label}")
        chosen = list(files)
        rng.shuffle(chosen)
        if per_class is not None:
            chosen = chosen[:per_class]
        # At least one test and one training image per class, whatever the fraction.
        n_test = min(max(1, round(test_fraction * len(chosen))), len(chosen) - 1)
        test = set(chosen[:n_test])
        for file in sorted(chosen):
            url_path = "/" + quote(file.relative_to(root).as_posix())
            rows.append(DemoUrl(url_path, label, "test" if file in test else "train"))
    return rows


def broken_samples(a_real_jpeg: Path) -> list[BrokenSample]:
    """Three URLs the downloader must reject: a missing file, a web page, a JPEG cut in half."""
    jpeg = a_real_jpeg.read_bytes()
    page = b"<!doctype html><title>Not here</title><p>This page is not an image.</p>\n"
    return [
        BrokenSample("/broken/missing.jpg", None, "", "http_404"),
        BrokenSample("/broken/not-an-image.jpg", page, "text/html; charset=utf-8", "not_image"),
        BrokenSample("/broken/truncated.jpg", jpeg[: len(jpeg) // 2], "image/jpeg", "corrupt"),
    ]


def broken_rows(samples: list[BrokenSample], label: str) -> list[DemoUrl]:
    """URL-list rows for the broken samples, filed under an existing class like real mistakes."""
    return [DemoUrl(sample.path, label, "train") for sample in samples]


def render_url_list(rows: list[DemoUrl], base_url: str) -> str:
    """The CSV text (`url,label,split` header) with every path joined to `base_url`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(URL_LIST_COLUMNS)
    writer.writerows((base_url.rstrip("/") + row.path, row.label, row.split) for row in rows)
    return buffer.getvalue()


def write_url_list(path: Path, rows: list[DemoUrl], base_url: str) -> Path:
    """Write the URL list atomically to `path`; returns `path`."""
    return atomic_write_text(path, render_url_list(rows, base_url))
