"""`--distributor ray` on a real local Ray cluster: one machine's result, resume, bad input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from imgclf.acquire.layout import PARTIAL_NAME
from imgclf.commands.download import main
from tests.acquire import sample_images as images
from tests.acquire.faults import read_rows, write_list
from tests.acquire.test_download_resume import snapshot
from tests.support.loopback import LoopbackServer, respond

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "utils" / "download_data.py"
QUIET = ["--quiet", "--retries", "0"]
SLOW = [*QUIET, "--concurrency", "2"]
LATENCY = 0.05


def ray_args(*extra: str) -> list[str]:
    return ["--distributor", "ray", *extra]


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    """Distinct JPEGs, copies of some of them under other paths, a corrupt one; 404 elsewhere."""
    routes = {f"/img/{i}.jpg": respond(images.jpeg(seed=300 + i)) for i in range(10)}
    routes["/copy-of-0.jpg"] = respond(images.jpeg(seed=300))
    routes["/copy-of-1.jpg"] = respond(images.jpeg(seed=301))
    routes["/copy-a-of-3.jpg"] = respond(images.jpeg(seed=303))
    routes["/copy-b-of-3.jpg"] = respond(images.jpeg(seed=303))
    routes["/corrupt.jpg"] = respond(images.truncated_jpeg())
    for i in range(60):
        routes[f"/slow/{i}.jpg"] = respond(images.jpeg(seed=400 + i), delay=LATENCY)
    with LoopbackServer(routes) as server:
        yield server


@pytest.fixture(scope="module")
def mixed_list(server, tmp_path_factory) -> Path:
    """Cut in shards of 5, it has duplicates inside a shard and across shards (one with another
    label), the same URL twice in two shards, and failures."""
    paths = [
        ("/img/0.jpg", "c0"),
        ("/img/1.jpg", "c1"),
        ("/gone.jpg", "c0"),
        ("/img/2.jpg", "c2"),
        ("/copy-of-1.jpg", "c1"),  # duplicate inside shard 0
        ("/img/3.jpg", "c0"),
        ("/copy-of-0.jpg", "c2"),  # duplicate of shard 0's row, another label
        ("/img/0.jpg", "c0"),  # the same URL and label as row 0: one file
        ("/img/4.jpg", "c1"),
        ("/corrupt.jpg", "c1"),
        ("/copy-a-of-3.jpg", "c0"),  # both duplicates of shard 1's /img/3.jpg
        ("/copy-b-of-3.jpg", "c1"),
        ("/img/5.jpg", "c2"),
        ("/gone-too.jpg", "c2"),
        ("/img/6.jpg", "c0"),
        ("/img/7.jpg", "c1"),
        ("/gone-again.jpg", "c0"),
    ]
    rows = [(server.url(path), label) for path, label in paths]
    return write_list(tmp_path_factory.mktemp("lists") / "mixed.csv", rows)


@pytest.fixture(scope="module")
def slow_list(server, tmp_path_factory) -> Path:
    rows = [(server.url(f"/slow/{i}.jpg"), f"c{i % 3}") for i in range(60)]
    return write_list(tmp_path_factory.mktemp("lists") / "slow.csv", rows)


def reference_of(url_list: Path, out: Path, *extra: str) -> Path:
    assert main(["--urls", str(url_list), "--out", str(out), *QUIET, *extra]) == 0
    return out


def stray_file(out: Path, url: str, label: str) -> None:
    """A file where an earlier, killed run had stored the image of a URL that now fails."""
    from imgclf.acquire.layout import url_key

    (out / label).mkdir(parents=True, exist_ok=True)
    (out / label / f"{url_key(url)}.jpg").write_bytes(images.jpeg(seed=1))


def test_ray_run_leaves_the_same_manifest_and_files_and_reruns_like_one(
    ray_cluster, server, mixed_list, tmp_path
):
    gone = server.url("/gone.jpg")
    stray_file(tmp_path / "one", gone, "c0")
    stray_file(tmp_path / "ray", gone, "c0")
    one = reference_of(mixed_list, tmp_path / "one")
    before = server.hits.copy()
    arguments = ["--urls", str(mixed_list), "--out", str(tmp_path / "ray"), *QUIET]
    assert main([*arguments, *ray_args("--shard-size", "5")]) == 0

    assert (tmp_path / "ray/manifest.csv").read_bytes() == (one / "manifest.csv").read_bytes()
    assert snapshot(tmp_path / "ray") == snapshot(one)
    hidden = [sorted(p.name for p in out.glob(".*")) for out in (one, tmp_path / "ray")]
    assert hidden[0] == hidden[1], "no shard state left"
    fetched = server.hits - before
    assert sum(fetched.values()) == len(read_rows(one))  # each row fetched once
    stats = [
        json.loads((out / "download_stats.json").read_text()) for out in (one, tmp_path / "ray")
    ]
    for key in ("rows_done", "status", "reason", "label", "bytes_ok", "label_conflicts"):
        assert stats[0][key] == stats[1][key], key
    assert stats[1]["label_conflicts"] == 2  # copy-of-0 (c2 vs c0), copy-b-of-3 (c1 vs c0)
    assert stats[1]["images_written"] == stats[0]["images_written"]

    before = server.hits.copy()
    assert main([*arguments, *ray_args("--shard-size", "5")]) == 0
    assert server.hits == before, "a rerun fetches nothing"
    assert snapshot(tmp_path / "ray") == snapshot(one)

    assert main([*arguments, *ray_args("--shard-size", "3"), "--retry-failed"]) == 0
    refetched = {path for path, count in (server.hits - before).items() if count}
    assert refetched == {"/gone.jpg", "/gone-too.jpg", "/gone-again.jpg", "/corrupt.jpg"}
    assert snapshot(tmp_path / "ray") == snapshot(one)


def test_a_killed_worker_is_retried_and_fetches_nothing_it_had_committed(
    ray_cluster, server, slow_list, tmp_path
):
    one = reference_of(slow_list, tmp_path / "one", "--concurrency", "2")
    out = tmp_path / "ray"
    part = out / ".shards" / "000000" / PARTIAL_NAME  # the rows of the shard's run in progress
    committed: list[str] = []
    finished = threading.Event()
    killer = threading.Thread(target=_kill_the_writer_of, args=(part, 8, committed, finished))
    killer.start()
    before = server.hits.copy()
    arguments = ["--urls", str(slow_list), "--out", str(out), *SLOW]
    try:
        assert main([*arguments, *ray_args("--shard-size", "30", "--max-shard-retries", "2")]) == 0
    finally:
        finished.set()
        killer.join()
    assert len(committed) >= 8, "the worker was killed mid-shard"
    assert snapshot(out) == snapshot(one)
    fetched = server.hits - before
    again = [url for url in committed if fetched[url.split(str(server.port))[1]] != 1]
    assert again == [], "rows committed before the kill were fetched again"


def _kill_the_writer_of(
    part: Path, rows: int, committed: list[str], finished: threading.Event
) -> None:
    """SIGKILL the process writing `part` once it holds `rows` rows; record those rows."""
    while not finished.is_set():
        if part.exists() and part.read_bytes().count(b"\n") > rows:
            for process in psutil.process_iter():
                try:
                    if any(f.path == str(part) for f in process.open_files()):
                        process.kill()
                        process.wait(10)
                        committed.extend(row["url"] for row in _complete_rows(part))
                        return
                except psutil.Error:
                    continue
        time.sleep(0.005)


def _complete_rows(part: Path) -> list[dict[str, str]]:
    text = part.read_text()
    lines = text.splitlines()[1 : text.count("\n")]  # a cut last line is not committed
    return [{"url": line.split(",")[0]} for line in lines]


@pytest.mark.slow
def test_ctrl_c_of_the_driver_exits_130_and_a_rerun_completes(
    ray_cluster, server, slow_list, tmp_path
):
    one = reference_of(slow_list, tmp_path / "one", "--concurrency", "2")
    out = tmp_path / "ray"
    command = [sys.executable, str(SCRIPT), "--urls", str(slow_list), "--out", str(out), *SLOW]
    command += ray_args("--shard-size", "10", "--ray-address", ray_cluster)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob(".shards/*/done.json")):
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()
    assert b"interrupted after" in stdout
    assert b"Traceback" not in stderr
    finished = [json.loads(path.read_text()) for path in out.glob(".shards/*/done.json")]
    before = server.hits.copy()
    assert (
        main(["--urls", str(slow_list), "--out", str(out), *SLOW, *ray_args("--shard-size", "10")])
        == 0
    )
    assert snapshot(out) == snapshot(one)
    assert sum((server.hits - before).values()) <= 60 - sum(m["rows"] for m in finished)


def test_bad_cluster_out_or_list_exit_2_with_one_sentence_and_write_nothing(
    tmp_path, capsys, mixed_list
):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    out = tmp_path / "out"
    urls = ["--urls", str(mixed_list)]
    cases = {
        "no Ray cluster answers": [*urls, "--out", str(out), "--ray-address", f"127.0.0.1:{free}"],
        "no such file": ["--urls", str(tmp_path / "missing.csv"), "--out", str(out)],
        "cannot be written": [*urls, "--out", str(mixed_list / "out")],
        "--import": ["--import", str(tmp_path), "--out", str(out)],
    }
    for expected, arguments in cases.items():
        assert main([*arguments, *ray_args()]) == 2, expected
        error = capsys.readouterr().err.strip()
        assert expected in error and len(error.splitlines()) == 1, error
        assert not out.exists(), expected
    assert main([*urls, "--out", str(out), "--ray-address", "auto"]) == 2
    assert "--ray-address is for --distributor ray" in capsys.readouterr().err


def test_a_node_that_does_not_see_the_output_folder_is_named(ray_cluster, tmp_path):
    import ray

    from imgclf.acquire.distributed import _probe

    problem = ray.get(_probe.remote(str(tmp_path), ".probe-not-written-by-a-driver"))
    assert "does not see" in problem and str(tmp_path) in problem


@pytest.mark.slow
def test_a_cluster_started_with_ray_start_is_joined_by_auto_and_by_its_address(
    server, mixed_list, tmp_path
):
    """A real `ray start --head` (its own temporary folder, loopback, one CPU), stopped by
    ending its `--block` process; the driver joins it as on a cluster node: `--ray-address
    auto` (which reads RAY_ADDRESS, as `ray start` tells users to set) and the address itself."""
    one = reference_of(mixed_list, tmp_path / "one")
    # Ray 2.60 clusters use token authentication; a driver joining one by address must turn
    # it on (RAY_AUTH_MODE) and hold the cluster's token: this test's own, not ~/.ray's.
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    with _ray_start_head(token) as address:
        environment = {**os.environ, **token, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": address}
        for name, given in (("auto", "auto"), ("address", address)):
            out = tmp_path / name
            command = [sys.executable, str(SCRIPT), "--urls", str(mixed_list), "--out", str(out)]
            command += [*QUIET, *ray_args("--shard-size", "5", "--ray-address", given)]
            done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True)
            assert done.returncode == 0, done.stderr.decode()
            assert (out / "manifest.csv").read_bytes() == (one / "manifest.csv").read_bytes()
            assert snapshot(out) == snapshot(one)


@contextlib.contextmanager
def _ray_start_head(token: dict[str, str]) -> Iterator[str]:
    """`ray start --head --block` on 127.0.0.1 with a free port; yields its address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Short: Ray's socket paths inside it must stay under the 107-byte limit.
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1"]
    command += ["--port", str(port), "--num-cpus", "1", "--temp-dir", str(temp)]
    command += ["--include-dashboard", "false", "--disable-usage-stats"]
    environment = {**os.environ, **token, "PYTHONPATH": str(ROOT)}
    head = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _answers(address):
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.2)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # --block: it stops the cluster's processes
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True
