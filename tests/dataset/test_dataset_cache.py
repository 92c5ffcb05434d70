"""The decoded-image cache: reuse, rebuild on change, atomicity, failures, eval equivalence."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.dataset import prepare_data, read_samples
from imgclf.dataset.cache import decode_square, load_or_build
from imgclf.dataset.presets import resize_size_for
from imgclf.imaging import open_rgb
from imgclf.model.preprocessing import EvalPreset, Preprocessing
from tests.conftest import make_image_folder
from tests.dataset.helpers import (
    manifest_rows_for_folder,
    save_gradient,
    sha256_of,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[2]


def finished_caches(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_build_then_reuse(tiny_image_folder: Path, tmp_path: Path):
    _, samples = read_samples(tiny_image_folder)
    cache_dir = tmp_path / "cache"

    first = load_or_build(tiny_image_folder, samples, 37, cache_dir, crop=32, progress=False)
    second = load_or_build(tiny_image_folder, samples, 37, cache_dir, crop=32, progress=False)

    assert first.built and not second.built
    assert second.folder == first.folder and finished_caches(cache_dir) == [first.folder]
    images = second.open()
    assert images.shape == (36, 37, 37, 3) and images.dtype == np.uint8
    for row in (0, 17, 35):
        expected = decode_square(tiny_image_folder / samples[row].path, 37, 32)
        np.testing.assert_array_equal(images[row], expected)


def test_changed_file_rebuilds_and_unchanged_rows_are_copied(
    tiny_image_folder: Path, tmp_path: Path
):
    _, samples = read_samples(tiny_image_folder)
    cache_dir = tmp_path / "cache"
    old = load_or_build(tiny_image_folder, samples, 37, cache_dir, crop=32, progress=False)
    # Mark an unchanged file's row in the old cache: if the rebuild copies rows instead of
    # decoding them again, the mark shows up in the new cache.
    marked = np.load(old.images_path, mmap_mode="r+")
    marked[5] = 7
    marked.flush()
    del marked
    changed = tiny_image_folder / samples[0].path
    save_gradient(changed, (64, 48), format="JPEG")
    _, samples = read_samples(tiny_image_folder)

    new = load_or_build(tiny_image_folder, samples, 37, cache_dir, crop=32, progress=False)

    assert new.built and new.folder != old.folder
    assert finished_caches(cache_dir) == [new.folder]  # the superseded cache is gone
    images = new.open()
    np.testing.assert_array_equal(images[0], decode_square(changed, 37, 32))
    assert (images[5] == 7).all()


def test_edit_behind_the_manifest_is_noticed(tiny_image_folder: Path, tmp_path: Path):
    write_manifest(tiny_image_folder, manifest_rows_for_folder(tiny_image_folder))
    _, samples = read_samples(tiny_image_folder)
    cache_dir = tmp_path / "cache"
    old = load_or_build(tiny_image_folder, samples, 37, cache_dir, progress=False)
    path = tiny_image_folder / samples[3].path
    save_gradient(path, (40, 40), format="JPEG")  # manifest sha256 is now stale
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))

    new = load_or_build(tiny_image_folder, samples, 37, cache_dir, progress=False)

    assert new.built and new.folder != old.folder
    np.testing.assert_array_equal(new.open()[3], decode_square(path, 37))


def test_other_sizes_get_their_own_cache(tiny_image_folder: Path, tmp_path: Path):
    cache_dir = tmp_path / "cache"
    small = prepare_data(tiny_image_folder, img_size=32, cache_dir=cache_dir, progress=False)
    large = prepare_data(tiny_image_folder, img_size=48, cache_dir=cache_dir, progress=False)
    assert small.cache.side == resize_size_for(32) and large.cache.side == resize_size_for(48)
    assert finished_caches(cache_dir) == sorted([small.cache.folder, large.cache.folder])


def test_default_cache_lives_in_the_data_root_and_is_not_read_as_a_class(
    tiny_image_folder: Path,
):
    data = prepare_data(tiny_image_folder, img_size=32, progress=False)
    assert data.cache.folder.parent == tiny_image_folder / ".cache"
    assert read_samples(tiny_image_folder)[0] == data.classes


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_interrupted_build_is_never_used(tmp_path: Path, stop: signal.Signals):
    root = make_image_folder(tmp_path / "images", per_class=4)
    rows = manifest_rows_for_folder(root)
    # A named pipe listed as an image: reading it blocks, so the build is stuck half-way
    # until the test kills it, like a power cut during the first epoch.
    stuck = root / "circle" / "zz_stuck.jpg"
    os.mkfifo(stuck)
    rows.append({"label": "circle", "status": "ok", "path": "circle/zz_stuck.jpg"})
    write_manifest(root, rows)
    cache_dir = root / ".cache"
    script = (
        "from imgclf.dataset import prepare_data; "
        f"prepare_data({str(root)!r}, img_size=32, workers=1, progress=False)"
    )
    builder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        for _ in range(600):  # until the build is under way (it cannot finish)
            if list(cache_dir.glob(".*.tmp")) or builder.poll() is not None:
                break
            time.sleep(0.1)
        assert builder.poll() is None, "the build should be stuck on the named pipe"
        builder.send_signal(stop)
        builder.wait(timeout=60)
    finally:
        builder.kill()
        builder.wait()
    assert finished_caches(cache_dir) == []
    # Killed: the half-built folder stays (and is ignored); Ctrl-C: the build cleans up.
    assert bool(list(cache_dir.glob(".*.tmp"))) == (stop == signal.SIGKILL)

    stuck.unlink()
    shutil.copy(root / "circle" / "000.jpg", stuck)
    rows[-1]["sha256"] = sha256_of(stuck)
    write_manifest(root, rows)
    data = prepare_data(root, img_size=32, progress=False)

    assert data.cache.built and not list(cache_dir.glob(".*.tmp"))
    row = data.rows["circle/zz_stuck.jpg"]
    np.testing.assert_array_equal(data.cache.open()[row], decode_square(stuck, 37, 32))


def test_undecodable_and_missing_files_are_left_out_with_reasons(tiny_image_folder: Path):
    (tiny_image_folder / "circle" / "004.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    rows = manifest_rows_for_folder(tiny_image_folder)
    (tiny_image_folder / "square" / "002.jpg").unlink()
    write_manifest(tiny_image_folder, rows)

    with pytest.warns(UserWarning, match=r"2 image\(s\) .* could not be decoded"):
        data = prepare_data(tiny_image_folder, img_size=32, progress=False)

    reasons = dict(data.skipped)
    assert set(reasons) == {"circle/004.jpg", "square/002.jpg"}
    assert reasons["circle/004.jpg"].startswith("cannot decode")
    assert reasons["square/002.jpg"].startswith("missing file")
    kept = {s.path for part in data.parts.values() for s in part}
    assert len(kept) == 34 and not kept & set(reasons)
    assert sum(sum(c.values()) for c in data.class_counts.values()) == 34


def test_parallel_build_equals_serial_build(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", per_class=90, size=24)
    _, samples = read_samples(root)
    parallel = load_or_build(root, samples, 24, tmp_path / "p", workers=2, progress=False)
    serial = load_or_build(root, samples, 24, tmp_path / "s", workers=1, progress=False)
    np.testing.assert_array_equal(parallel.open(), serial.open())


def exif_rotated_jpeg(path: Path) -> Path:
    """A 60×30 gradient stored sideways with EXIF orientation 6 (rotate 90° to view)."""
    save_gradient(path, (60, 30), format="JPEG")
    image = Image.open(path)
    exif = image.getexif()
    exif[0x0112] = 6
    image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize("img_size", [32, 96])
def test_eval_preset_on_cache_equals_eval_preset_on_original(tmp_path: Path, img_size: int):
    files = [
        save_gradient(tmp_path / "a" / "square.jpg", (100, 100), quality=95),
        save_gradient(tmp_path / "a" / "wide.jpg", (640, 480), quality=95),
        save_gradient(tmp_path / "a" / "odd.jpg", (333, 517), quality=95),
        save_gradient(tmp_path / "b" / "tiny.png", (50, 80)),
        save_gradient(tmp_path / "b" / "banner.jpg", (2000, 300), quality=95),
        exif_rotated_jpeg(tmp_path / "b" / "rotated.jpg"),
    ]
    rgba = Image.open(files[3]).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(files[3])
    preset = EvalPreset(Preprocessing.for_img_size(img_size))
    data = prepare_data(tmp_path, img_size=img_size, val_fraction=0.5, progress=False)
    cached = {
        sample.path: image
        for part in ("train", "valid")
        for sample, (image, _) in zip(data.parts[part], data.dataset(part, preset), strict=True)
    }

    for path in files:
        expected = preset(open_rgb(path))
        got = cached[path.relative_to(tmp_path).as_posix()]
        assert got.shape == expected.shape == (3, img_size, img_size)
        # One 8-bit step after normalisation is 1 / 255 / std ≈ 0.0175: Pillow's and torch's
        # bilinear resize may round a few pixels differently, by at most that.
        assert torch.max(torch.abs(got - expected)) < 0.02, path.name


def test_a_cache_another_training_still_reads_is_not_superseded(tmp_path: Path):
    cache_dir = tmp_path / "cache"
    first, second = (
        make_image_folder(tmp_path / name, per_class=3, size=24) for name in ("a", "b")
    )
    save_gradient(next((second / "circle").iterdir()), (30, 20), format="JPEG")  # other data
    # Another process (a training on `first`) opens its cache and keeps running.
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from imgclf.dataset import read_samples; "
            "from imgclf.dataset.cache import load_or_build; "
            f"c = load_or_build({str(first)!r}, read_samples({str(first)!r})[1], 37, "
            f"{str(cache_dir)!r}, crop=32, progress=False); print(c.folder, flush=True); "
            "sys.stdin.read(); c.open()[0].sum()",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    in_use = Path(reader.stdout.readline().strip())
    _, samples = read_samples(second)
    mine = load_or_build(second, samples, 37, cache_dir, crop=32, progress=False)
    assert finished_caches(cache_dir) == sorted([in_use, mine.folder])
    reader.communicate("")  # it reads its cache once more, then ends
    assert reader.returncode == 0
    # Once no one reads it, the next build of that size supersedes it.
    save_gradient(next((second / "square").iterdir()), (30, 20), format="JPEG")
    _, samples = read_samples(second)
    newest = load_or_build(second, samples, 37, cache_dir, crop=32, progress=False)
    assert finished_caches(cache_dir) == [newest.folder]
