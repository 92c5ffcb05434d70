"""The output folder: names it owns, folders it cannot write, and inputs that live inside it."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.acquire.labels import safe_label
from imgclf.commands.download import main
from tests.acquire import sample_images as images
from tests.acquire.faults import read_rows, write_list
from tests.support.loopback import LoopbackServer, respond
from tests.support.readonly import read_only_wrapper

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "utils" / "download_data.py"
QUIET = ["--quiet", "--retries", "0"]
FILE_SIZE_LIMIT = 64 * 1024  # bytes: "the disk is full" for anything larger


@pytest.fixture(scope="module")
def server():
    big = images.encode(images.picture((256, 256), seed=1), "BMP")  # 192 KiB, uncompressed
    assert len(big) > FILE_SIZE_LIMIT
    routes = {f"/img/{index}.jpg": respond(images.jpeg(seed=500 + index)) for index in range(6)}
    routes["/big.bmp"] = respond(big, content_type="image/bmp")
    with LoopbackServer(routes) as running:
        yield running


def test_labels_named_like_the_downloaders_files_get_their_own_folders(server, tmp_path):
    labels = ["manifest.csv", "download_stats.json", ".download.lock"]
    rows = [(server.url(f"/img/{index}.jpg"), label) for index, label in enumerate(labels)]
    urls = write_list(tmp_path / "urls.csv", rows)
    out = tmp_path / "out"
    for _run in range(2):
        assert main(["--urls", str(urls), "--out", str(out), *QUIET]) == 0
    assert [row["status"] for row in read_rows(out)] == ["ok"] * 3
    folders = sorted(path.name for path in out.iterdir() if path.is_dir())
    assert folders == ["_download_stats.json", "_manifest.csv", "download.lock"]
    assert safe_label("MANIFEST.CSV ") == "_MANIFEST.CSV"  # case-insensitive file systems
    assert (out / "manifest.csv").is_file() and (out / "download_stats.json").is_file()


def run_script(urls: Path, out: Path, preexec=None, wrapper=()) -> subprocess.CompletedProcess:
    command = [*wrapper, sys.executable, str(SCRIPT), "--urls", str(urls), "--out", str(out)]
    return subprocess.run(
        [*command, *QUIET, "--workers", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=preexec,
    )


def assert_one_sentence_exit_2(done: subprocess.CompletedProcess, out: Path) -> None:
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip()
    assert "Traceback" not in message and message.count("\n") == 0, message
    assert f"{out}: cannot write" in message and "rerun the same command" in message


def leftovers(out: Path) -> list[str]:
    return [path.name for path in out.rglob("*.tmp")]


def test_a_full_disk_stops_with_one_sentence_and_the_rerun_completes(server, tmp_path):
    rows = [(server.url("/img/0.jpg"), "a"), (server.url("/big.bmp"), "a")]
    rows += [(server.url(f"/img/{index}.jpg"), "b") for index in range(1, 4)]
    urls = write_list(tmp_path / "urls.csv", rows)
    out = tmp_path / "out"

    def full_disk():  # no file may grow past the limit: writes fail with EFBIG, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    assert_one_sentence_exit_2(run_script(urls, out, preexec=full_disk), out)
    assert leftovers(out) == []
    done = run_script(urls, out)
    assert done.returncode == 0, done.stderr
    assert [row["status"] for row in read_rows(out)] == ["ok"] * 5
    assert leftovers(out) == []


def test_a_read_only_out_stops_with_one_sentence(server, tmp_path):
    urls = write_list(tmp_path / "urls.csv", [(server.url("/img/0.jpg"), "a")])
    for out in (tmp_path / "ro", tmp_path / "ro-parent"):
        out.mkdir()
    target = tmp_path / "ro-parent" / "new"  # --out does not exist yet, its parent is read-only
    for wrap, out in ((tmp_path / "ro", tmp_path / "ro"), (tmp_path / "ro-parent", target)):
        wrapper = read_only_wrapper(wrap)
        assert_one_sentence_exit_2(run_script(urls, out, wrapper=wrapper), out)
        wrap.chmod(0o755)
    assert list((tmp_path / "ro").iterdir()) == []


def test_urls_folder_used_as_out_does_not_read_its_own_manifest(server, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_list(folder / "list.csv", [(server.url(f"/img/{index}.jpg"), "a") for index in range(3)])
    for _run in range(2):
        assert main(["--urls", str(folder), "--out", str(folder), *QUIET]) == 0
        assert len(read_rows(folder)) == 3
    manifest = folder / "manifest.csv"
    assert main(["--urls", str(manifest), "--out", str(folder), *QUIET]) == 2


def test_an_out_that_is_a_file_or_overlaps_the_import_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    urls = write_list(tmp_path / "urls.csv", [("http://example.test/a.jpg", "a")])
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        assert main(["--urls", str(urls), "--out", str(out), *QUIET]) == 2
        assert "is a file, not a folder" in capsys.readouterr().err
    source = tmp_path / "handover"
    (source / "cat").mkdir(parents=True)
    (source / "cat" / "1.jpg").write_bytes(images.jpeg(seed=1))
    for out in (source, source / "out"):
        assert main(["--import", str(source), "--out", str(out), *QUIET]) == 2
        assert "overlap" in capsys.readouterr().err


def test_a_label_folder_an_older_version_named_download_stats_json_is_moved_aside(
    server, tmp_path
):
    out = tmp_path / "out"
    (out / "download_stats.json").mkdir(parents=True)  # what the older version left
    (out / "download_stats.json" / "0123456789abcdef.jpg").write_bytes(images.jpeg(seed=9))
    urls = write_list(tmp_path / "urls.csv", [(server.url("/img/0.jpg"), "download_stats.json")])
    assert main(["--urls", str(urls), "--out", str(out), *QUIET]) == 0
    assert (out / "download_stats.json").is_file()
    assert (out / "_download_stats.json" / "0123456789abcdef.jpg").is_file()
    assert read_rows(out)[0]["path"].startswith("_download_stats.json/")
