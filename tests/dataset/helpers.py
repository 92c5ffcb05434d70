"""Small writers for dataset tests: manifests and odd image files."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from PIL import Image

from imgclf.acquire.manifest import COLUMNS as MANIFEST_HEADER


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(root: Path, rows: list[dict]) -> Path:
    """Write `<root>/manifest.csv` in the downloader's format; missing columns are empty."""
    path = root / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, MANIFEST_HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow({name: row.get(name, "") for name in MANIFEST_HEADER})
    return path


def manifest_rows_for_folder(root: Path, test_every: int = 0) -> list[dict]:
    """One 'ok' row per `<root>/<label>/*.jpg`; every `test_every`-th file gets split=test."""
    rows = []
    for index, path in enumerate(sorted(root.glob("*/*.jpg"))):
        rows.append(
            {
                "url": f"http://127.0.0.1/{path.name}",
                "label": path.parent.name,
                "split": "test" if test_every and index % test_every == 0 else "",
                "status": "ok",
                "path": path.relative_to(root).as_posix(),
                "sha256": sha256_of(path),
            }
        )
    return rows


def save_gradient(path: Path, size: tuple[int, int], **save_args) -> Path:
    """A smooth RGB gradient of `size` (width, height): resizing it is well conditioned."""
    width, height = size
    image = Image.linear_gradient("L").resize((width, height))
    rgb = Image.merge("RGB", (image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), image))
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(path, **save_args)
    return path
