"""read_samples: folders and manifests, and every bad-input sentence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.dataset import Sample, read_samples
from imgclf.errors import InputError
from tests.conftest import TINY_CLASSES, make_image_folder
from tests.dataset.helpers import manifest_rows_for_folder, sha256_of, write_manifest


def test_folder_classes_and_files_are_sorted_with_hashes(tiny_image_folder: Path):
    classes, samples = read_samples(tiny_image_folder)

    assert classes == sorted(TINY_CLASSES)
    assert len(samples) == 3 * 12
    assert [s.path for s in samples] == sorted(s.path for s in samples)
    first = samples[0]
    assert first == Sample(
        path="circle/000.jpg",
        label="circle",
        sha256=sha256_of(tiny_image_folder / "circle/000.jpg"),
        split=None,
    )


def test_folder_ignores_hidden_non_image_and_top_level_files(tiny_image_folder: Path):
    (tiny_image_folder / ".cache").mkdir()
    (tiny_image_folder / ".cache" / "x.jpg").write_bytes(b"not read")
    (tiny_image_folder / "circle" / ".hidden.jpg").write_bytes(b"not read")
    (tiny_image_folder / "circle" / "notes.txt").write_text("not an image")
    (tiny_image_folder / "top.jpg").write_bytes(b"not in a class folder")
    (tiny_image_folder / "square" / "nested").mkdir()
    (tiny_image_folder / "square" / "001.jpg").rename(tiny_image_folder / "square/nested/a.JPG")

    classes, samples = read_samples(tiny_image_folder)

    assert classes == sorted(TINY_CLASSES)
    paths = {s.path for s in samples}
    assert len(paths) == 36
    assert "square/nested/a.JPG" in paths
    assert not any(".hidden" in p or p.endswith(".txt") or ".cache" in p for p in paths)


def test_manifest_reads_ok_rows_with_split_and_skips_failed_and_duplicate(
    tiny_image_folder: Path,
):
    rows = manifest_rows_for_folder(tiny_image_folder, test_every=5)
    rows[1]["status"] = "failed"
    rows[1]["reason"] = "HTTP 404"
    rows[2]["status"] = "duplicate"
    rows[2]["duplicate_of"] = rows[0]["url"]
    write_manifest(tiny_image_folder, rows)
    # A file on disk that the manifest does not list is not read: the manifest is the truth.
    (tiny_image_folder / "circle" / "stray.jpg").write_bytes(
        (tiny_image_folder / "circle/000.jpg").read_bytes()
    )

    classes, samples = read_samples(tiny_image_folder)

    assert classes == sorted(TINY_CLASSES)
    assert [s.path for s in samples] == sorted(
        r["path"] for i, r in enumerate(rows) if i not in (1, 2)
    )
    by_path = {s.path: s for s in samples}
    assert by_path[rows[0]["path"]].split == "test"
    assert by_path[rows[3]["path"]].split is None
    assert by_path[rows[3]["path"]].sha256 == rows[3]["sha256"]


def test_missing_folder(tmp_path: Path):
    with pytest.raises(InputError, match=r"Data folder .*nowhere does not exist"):
        read_samples(tmp_path / "nowhere")


def test_folder_without_class_folders(tmp_path: Path):
    (tmp_path / "loose.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"has no class folders and no manifest.csv"):
        read_samples(tmp_path)


def test_class_folder_without_images(tiny_image_folder: Path):
    (tiny_image_folder / "empty").mkdir()
    (tiny_image_folder / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"Class folder .*empty has no images"):
        read_samples(tiny_image_folder)


def test_single_class_folder(tmp_path: Path):
    make_image_folder(tmp_path, per_class=2)
    for label in ("square", "triangle"):
        for path in (tmp_path / label).iterdir():
            path.unlink()
        (tmp_path / label).rmdir()
    with pytest.raises(InputError, match=r"1 class \(circle\).*at least two classes"):
        read_samples(tmp_path)


def test_manifest_missing_columns(tmp_path: Path):
    (tmp_path / "manifest.csv").write_text("url,label\nhttp://x/a.jpg,cat\n")
    with pytest.raises(InputError, match=r"manifest.csv lacks the column\(s\) split, status"):
        read_samples(tmp_path)


@pytest.mark.parametrize(
    ("failed_labels", "message"),
    [
        (set(TINY_CLASSES), r"has no 'ok' rows \(36 rows in all\)"),
        ({"square"}, r"no 'ok' row for class 'square' \(all 12 failed"),
    ],
)
def test_manifest_classes_whose_downloads_all_failed(
    tiny_image_folder: Path, failed_labels: set[str], message: str
):
    rows = manifest_rows_for_folder(tiny_image_folder)
    for row in rows:
        if row["label"] in failed_labels:
            row["status"] = "failed"
    write_manifest(tiny_image_folder, rows)
    with pytest.raises(InputError, match=message):
        read_samples(tiny_image_folder)


def test_manifest_ok_row_without_path_names_the_line(tiny_image_folder: Path):
    rows = manifest_rows_for_folder(tiny_image_folder)
    rows[4]["path"] = ""
    write_manifest(tiny_image_folder, rows)
    with pytest.raises(InputError, match=r"manifest.csv line 6 is an 'ok' row without a path"):
        read_samples(tiny_image_folder)


def test_manifest_of_one_class(tiny_image_folder: Path):
    rows = [r for r in manifest_rows_for_folder(tiny_image_folder) if r["label"] == "circle"]
    write_manifest(tiny_image_folder, rows)
    with pytest.raises(InputError, match=r"manifest.csv has images of 1 class"):
        read_samples(tiny_image_folder)


def test_importing_the_reader_does_not_import_torch():
    code = (
        "import sys; from imgclf.dataset import Sample, read_samples; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../outside.jpg", r"line 3 has path '../outside.jpg', which leaves the data folder"),
        ("/etc/hosts", r"line 3 has path '/etc/hosts', which leaves the data folder"),
        ("circle/000.jpg", r"line 3 lists 'circle/000.jpg' again \(first on line 2\)"),
    ],
)
def test_manifest_paths_must_stay_inside_and_be_unique(
    tiny_image_folder: Path, path: str, message: str
):
    rows = manifest_rows_for_folder(tiny_image_folder)
    rows[1]["path"] = path
    write_manifest(tiny_image_folder, rows)
    with pytest.raises(InputError, match=message):
        read_samples(tiny_image_folder)
