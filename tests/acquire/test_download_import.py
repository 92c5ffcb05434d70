"""--import of hostile folders and archives: special files, bad CRCs, members that lie."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

from imgclf.commands.download import main
from tests.acquire import sample_images as images
from tests.acquire.faults import read_rows

ROOT = Path(__file__).resolve().parents[2]
IMPORT = ["--quiet", "--min-side", "8"]


def run_import(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The real script in its own process (a blocked import must not block the test run)."""
    # VmHWM, the peak resident size of this program (ru_maxrss would also count the test
    # process it was forked from: Linux carries it over exec).
    code = (
        "import re, sys\n"
        "from imgclf.commands.download import main\n"
        "code = main(sys.argv[1:])\n"
        "status = open('/proc/self/status').read()\n"
        "print('peak_kib', re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n"
        "sys.exit(code)\n"
    )
    command = [sys.executable, "-c", code, "--import", str(source), "--out", str(out)]
    return subprocess.run(
        [*command, *IMPORT, "--workers", "1", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_fifo_in_the_folder_is_skipped_without_blocking(tmp_path):
    source = tmp_path / "handover"
    for seed, label in enumerate(("cat", "dog")):
        (source / label).mkdir(parents=True)
        (source / label / "1.jpg").write_bytes(images.jpeg(seed=seed))
    os.mkfifo(source / "cat" / "pipe.jpg")  # nobody ever writes to it: reading blocks forever
    (source / "dog" / "gone.jpg").symlink_to(source / "nowhere.jpg")
    (source / "dog" / "link.jpg").symlink_to(source / "cat" / "pipe.jpg")
    done = run_import(source, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path / "out")
    assert [(row["url"].rsplit("/", 2)[-2:], row["status"]) for row in rows] == [
        (["cat", "1.jpg"], "ok"),
        (["dog", "1.jpg"], "ok"),
    ]


def test_a_fifo_given_as_the_import_source_is_an_input_error(tmp_path):
    os.mkfifo(tmp_path / "archive.zip")
    done = run_import(tmp_path / "archive.zip", tmp_path / "out")
    assert done.returncode == 2 and "not a regular file or folder" in done.stderr


def corrupt_member_data(archive: Path, name: str) -> None:
    """Flip one byte inside the stored data of member `name` (its CRC no longer matches)."""
    with zipfile.ZipFile(archive) as handle:
        info = handle.getinfo(name)
    data = bytearray(archive.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 :][:4])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.compress_size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


def test_a_zip_member_with_a_bad_crc_fails_alone(tmp_path):
    archive = tmp_path / "handover.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
        handle.writestr("set/cat/1.jpg", images.jpeg(seed=1))
        handle.writestr("set/cat/2.jpg", images.jpeg(seed=2))
        handle.writestr("set/dog/1.jpg", images.jpeg(seed=3))
    corrupt_member_data(archive, "set/cat/2.jpg")
    out = tmp_path / "out"
    assert main(["--import", str(archive), "--out", str(out), *IMPORT]) == 0
    rows = read_rows(out)
    assert [(row["status"], row["reason"]) for row in rows] == [
        ("ok", ""),
        ("failed", "unreadable"),
        ("ok", ""),
    ]


def zip_with_a_lying_member(archive: Path, inflated: int, claimed: int) -> None:
    """A member of `inflated` zero bytes whose headers claim `claimed` bytes (a zip bomb)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1024 * 1024)
    compressed = b"".join(compressor.compress(chunk) for _ in range(inflated // len(chunk)))
    compressed += compressor.flush()
    crc = 0
    for _ in range(inflated // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("set/cat/ok.jpg", images.jpeg(seed=4))
        handle.writestr("set/dog/ok.jpg", images.jpeg(seed=5))
        info = zipfile.ZipInfo("set/cat/bomb.jpg")
        info.compress_type = zipfile.ZIP_DEFLATED
        handle.writestr(info, b"placeholder")
    # Rewrite the archive with the bomb's real compressed bytes and the false size.
    data = archive.read_bytes()
    with zipfile.ZipFile(archive) as handle:
        bomb = handle.getinfo("set/cat/bomb.jpg")
    head_end = bomb.header_offset + 30 + len(bomb.filename) + len(bomb.extra)
    local = bytearray(data[bomb.header_offset : head_end])
    struct.pack_into("<III", local, 14, crc, len(compressed), claimed)
    body = data[: bomb.header_offset] + bytes(local) + compressed
    central = bytearray(data[data.index(b"PK\x01\x02") :])
    position = 0
    while (position := central.find(b"PK\x01\x02", position)) != -1:
        name_length = struct.unpack_from("<H", central, position + 28)[0]
        name = bytes(central[position + 46 : position + 46 + name_length])
        if name == b"set/cat/bomb.jpg":
            struct.pack_into("<III", central, position + 16, crc, len(compressed), claimed)
        position += 46
    end = central.rfind(b"PK\x05\x06")
    struct.pack_into("<I", central, end + 16, len(body))  # where the central directory starts
    archive.write_bytes(body + bytes(central))


def test_a_member_that_inflates_far_beyond_its_claim_is_read_in_bounded_memory(tmp_path):
    archive = tmp_path / "bomb.zip"
    inflated = 256 * 1024 * 1024
    zip_with_a_lying_member(archive, inflated=inflated, claimed=1024)
    done = run_import(archive, tmp_path / "out", "--max-bytes", "1M")
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path / "out")
    assert [(row["url"].rsplit("/", 1)[-1], row["reason"]) for row in rows] == [
        ("ok.jpg", ""),
        ("ok.jpg", ""),
        ("bomb.jpg", "unreadable"),  # stops at the claimed size; the CRC then fails
    ]
    peak_mib = int(done.stdout.split("peak_kib")[-1]) / 1024
    assert peak_mib < inflated / 2**20 / 2, f"{peak_mib:.0f} MiB for a bomb"
