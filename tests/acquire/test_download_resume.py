"""Resume after SIGKILL, Ctrl-C, and reruns: the output never depends on interruptions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from imgclf.commands.download import main
from tests.acquire import sample_images as images
from tests.acquire.faults import read_rows, write_list
from tests.support.loopback import LoopbackServer, respond

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "utils" / "download_data.py"
LATENCY = 0.03
# Four requests in flight and 30 ms per response: a run of 120 URLs lasts about a second.
SLOW = ["--concurrency", "4", "--quiet", "--retries", "0"]


@pytest.fixture(scope="module")
def slow_server() -> Iterator[LoopbackServer]:
    """100 distinct JPEGs, 10 missing, 5 corrupt, 5 repeats of earlier bytes; each 30 ms."""
    routes = {}
    for index in range(100):
        routes[f"/img/{index}.jpg"] = respond(images.jpeg(seed=200 + index), delay=LATENCY)
    for index in range(5):
        routes[f"/corrupt/{index}.jpg"] = respond(images.truncated_jpeg(), delay=LATENCY)
        routes[f"/again/{index}.jpg"] = respond(images.jpeg(seed=200 + index), delay=LATENCY)
    with LoopbackServer(routes) as server:
        yield server


@pytest.fixture(scope="module")
def url_list(slow_server, tmp_path_factory) -> Path:
    rows = []
    for index in range(100):
        rows.append((slow_server.url(f"/img/{index}.jpg"), f"class{index % 3}", "train"))
        if index % 10 == 5:
            rows.append((slow_server.url(f"/missing/{index}.jpg"), "class0", "test"))
        if index % 20 == 7:
            rows.append((slow_server.url(f"/corrupt/{index // 20}.jpg"), "class1", "train"))
            rows.append((slow_server.url(f"/again/{index // 20}.jpg"), "class2", "test"))
    path = tmp_path_factory.mktemp("lists") / "urls.csv"
    return write_list(path, rows, header=("url", "label", "split"))


@pytest.fixture(scope="module")
def reference(url_list, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["--urls", str(url_list), "--out", str(out), *SLOW]) == 0
    return out


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file under `out` but the run statistics and the lock (timings, pid), by path."""
    return {
        path.relative_to(out).as_posix(): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name not in ("download_stats.json", ".download.lock")
    }


def start(url_list: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, str(SCRIPT), "--urls", str(url_list), "--out", str(out), *SLOW]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_rows(out: Path, rows: int, process: subprocess.Popen) -> None:
    """Block until the manifest holds at least `rows` data rows (the run is mid-way)."""
    manifest = out / ".manifest.partial.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if manifest.exists() and manifest.read_bytes().count(b"\n") > rows:
            return
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.005)
    raise AssertionError(f"no {rows} manifest rows within 60 s")


def test_reference_run_has_every_kind_of_row(reference):
    statuses = {row["status"] for row in read_rows(reference)}
    assert statuses == {"ok", "failed", "duplicate"}


def test_resume_after_two_sigkills_gives_exactly_the_uninterrupted_result(
    url_list, reference, tmp_path
):
    out = tmp_path / "out"
    for rows in (25, 60):
        process = start(url_list, out)
        wait_for_rows(out, rows, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
    assert main(["--urls", str(url_list), "--out", str(out), *SLOW]) == 0
    assert snapshot(out) == snapshot(reference)
    leftovers = [p.name for p in out.rglob(".*") if p.name != ".download.lock"]
    assert leftovers == [], "temporary files or the previous manifest remain"


def test_ctrl_c_exits_130_with_a_flushed_manifest_and_a_summary(url_list, reference, tmp_path):
    out = tmp_path / "out"
    process = start(url_list, out)
    wait_for_rows(out, 20, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()
    assert b"interrupted after" in stdout
    assert b"Traceback" not in stderr
    partial = read_rows(out)
    expected = read_rows(reference)
    assert 20 <= len(partial) < len(expected)
    assert partial == expected[: len(partial)], "committed rows are the reference's prefix"
    assert not [p for p in out.rglob("*.tmp")]
    assert main(["--urls", str(url_list), "--out", str(out), *SLOW]) == 0
    assert snapshot(out) == snapshot(reference)


def test_rerun_fetches_nothing_retries_failures_on_request_and_repairs_damage(
    slow_server, url_list, tmp_path
):
    out = tmp_path / "out"
    assert main(["--urls", str(url_list), "--out", str(out), *SLOW]) == 0
    rows = read_rows(out)
    before = slow_server.hits.copy()

    assert main(["--urls", str(url_list), "--out", str(out), *SLOW]) == 0
    assert slow_server.hits == before, "a rerun must not fetch anything"
    assert read_rows(out) == rows

    assert main(["--urls", str(url_list), "--out", str(out), *SLOW, "--retry-failed"]) == 0
    refetched = {path for path in slow_server.hits if slow_server.hits[path] != before[path]}
    failed = {
        row["url"].split(str(slow_server.port))[1] for row in rows if row["status"] == "failed"
    }
    assert refetched == failed

    damaged = next(row for row in rows if row["status"] == "ok")
    (out / damaged["path"]).write_bytes(b"half a picture")
    again = slow_server.hits.copy()
    assert main(["--urls", str(url_list), "--out", str(out), *SLOW]) == 0
    changed = [path for path in slow_server.hits if slow_server.hits[path] != again[path]]
    assert changed == [damaged["url"].split(str(slow_server.port))[1]]
    assert read_rows(out) == rows


def test_an_extended_list_downloads_only_the_new_urls(slow_server, url_list, tmp_path):
    lines = url_list.read_text().splitlines()
    rows = [tuple(line.split(",")) for line in lines[1:60]]
    first_half = write_list(tmp_path / "half.csv", rows, header=("url", "label", "split"))
    out = tmp_path / "out"
    assert main(["--urls", str(first_half), "--out", str(out), *SLOW]) == 0
    before = slow_server.hits.copy()
    assert main(["--urls", str(url_list), "--out", str(out), *SLOW]) == 0
    requested = sum(slow_server.hits.values()) - sum(before.values())
    assert requested == len(lines) - 60
    assert len(read_rows(out)) == len(lines) - 1


def test_workers_of_a_killed_run_exit_too(url_list, tmp_path):
    process = start(url_list, tmp_path / "out")
    wait_for_rows(tmp_path / "out", 5, process)
    workers = _children(process.pid)
    assert workers, "the run has worker processes"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # do not leave them running if the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def _children(pid: int) -> list[int]:
    """The direct child processes of `pid` (psutil: the slim image has no `pgrep`)."""
    return [child.pid for child in psutil.Process(pid).children()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_during_a_rerun_keeps_every_earlier_row(url_list, reference, tmp_path):
    out = tmp_path / "out"
    assert main(["--urls", str(url_list), "--out", str(out), *SLOW]) == 0
    for image in out.glob("*/*.jpg"):
        image.unlink()  # the rerun must fetch every image again: slow enough to interrupt
    process = start(url_list, out)
    wait_for_rows(out, 20, process)
    # The previous manifest stays whole until the new one replaces it.
    assert (out / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    # Rows not reached yet come from the earlier run's manifest: nothing is forgotten.
    assert read_rows(out) == read_rows(reference)
    assert not (out / ".manifest.partial.csv").exists()
    assert main(["--urls", str(url_list), "--out", str(out), *SLOW]) == 0
    assert snapshot(out) == snapshot(reference)


def test_a_second_run_into_the_same_folder_exits_2_naming_the_first(tmp_path):
    release = threading.Event()

    async def held(request):
        while not release.is_set():  # the first run stays busy until the test is done with it
            await asyncio.sleep(0.01)
        return web.Response(body=images.jpeg(seed=300), content_type="image/jpeg")

    routes = {"/hold.jpg": held, "/ok.jpg": respond(images.jpeg(seed=301))}
    out = tmp_path / "out"
    with LoopbackServer(routes) as server:
        urls = write_list(tmp_path / "urls.csv", [(server.url("/ok.jpg"), "a"),
                                                  (server.url("/hold.jpg"), "b")])  # fmt: skip
        first = start(urls, out)
        try:
            while server.hits["/hold.jpg"] == 0:
                assert first.poll() is None, first.communicate()
                time.sleep(0.01)
            second = subprocess.run(
                [sys.executable, str(SCRIPT), "--urls", str(urls), "--out", str(out), *SLOW],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert second.returncode == 2, second.stderr
            message = second.stderr.strip()
            assert message.count("\n") == 0 and f"pid {first.pid} " in message
            assert "in use by another download" in message
            # A lock left by a killed run is stale: the kernel released it with the process.
            first.send_signal(signal.SIGKILL)
            first.wait()
        finally:
            release.set()
            first.kill()
            first.communicate()
        assert main(["--urls", str(urls), "--out", str(out), *SLOW]) == 0
    assert [row["status"] for row in read_rows(out)] == ["ok", "ok"]
