"""A validation worker that dies (OOM killer, decoder crash) never hangs the downloader."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from imgclf.acquire.batching import VALIDATE_TIMEOUT, WORKER_CRASHED, BatchedValidator, WorkerPool
from imgclf.acquire.pipeline import _start_workers
from imgclf.acquire.validator import ValidationOptions, validate_batch
from imgclf.commands.download import build_parser, options_from_args
from imgclf.errors import InputError
from tests.acquire import sample_images as images
from tests.acquire.crashing import HANG, POISON, validate_or_die, validate_or_hang
from tests.acquire.faults import read_rows, write_list
from tests.support.loopback import LoopbackServer, respond

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "utils" / "download_data.py"


def _validate_on_fresh_pools(batch, run_batch, options, folder, later_image):
    """Validate batch on a new 2-worker pool (1-worker isolation pool), then later_image.

    Returns the verdicts, the later verdict (the pools work again afterwards) and both
    pools' restart counts.
    """

    async def run():
        workers = WorkerPool(partial(_start_workers, 2))
        isolation = WorkerPool(partial(_start_workers, 1))
        validator = BatchedValidator(workers, isolation, run_batch=run_batch)
        try:
            futures = [
                validator.validate(data, str(folder), f"k{index}", options)
                for index, data in enumerate(batch)
            ]
            verdicts = await asyncio.wait_for(asyncio.gather(*futures), 120)
            later = await validator.validate(later_image, str(folder), "k9", options)
            return verdicts, later, workers.restarts, isolation.restarts
        finally:
            workers.shutdown()
            isolation.shutdown()

    return asyncio.run(run())


def test_an_input_that_kills_its_worker_twice_gets_a_reason_and_its_neighbours_pass(tmp_path):
    good = [images.jpeg(seed=60 + index) for index in range(3)]
    batch = [good[0], POISON, good[1], good[2]]
    verdicts, later, restarts, isolated_restarts = _validate_on_fresh_pools(
        batch, validate_or_die, ValidationOptions(), tmp_path, good[0]
    )
    assert [verdict.reason for verdict in verdicts] == ["", WORKER_CRASHED, "", ""]
    assert later.reason == "" and restarts == 1 and isolated_restarts == 1


def test_an_image_whose_validation_hangs_times_out_and_its_neighbours_pass(tmp_path):
    good = [images.jpeg(seed=70 + index) for index in range(2)]
    batch = [good[0], HANG, good[1]]
    # The hung workers are replaced: the pools work again afterwards.
    verdicts, later, restarts, isolated_restarts = _validate_on_fresh_pools(
        batch, validate_or_hang, ValidationOptions(timeout=1.0), tmp_path, good[1]
    )
    assert [verdict.reason for verdict in verdicts] == ["", VALIDATE_TIMEOUT, ""]
    assert all(Path(verdict.staged).is_file() for verdict in (verdicts[0], verdicts[2], later))
    assert later.reason == "" and restarts == 1 and isolated_restarts == 1


def test_the_time_limit_is_only_armed_in_worker_processes(tmp_path):
    # In this (parent) process the timer would end the whole run, or take over a timer of the
    # caller's (pytest-timeout's): validate_batch leaves the process's timer alone.
    previous = signal.setitimer(signal.ITIMER_REAL, 1000)
    try:
        verdicts = validate_batch(
            [(images.jpeg(seed=75), str(tmp_path), "k", ValidationOptions(timeout=0.001))]
        )
        remaining, _interval = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, *previous)
    assert verdicts[0].reason == "" and 900 < remaining <= 1000


def test_validate_timeout_option_reaches_the_validation_and_is_checked():
    parser = build_parser()
    options = options_from_args(parser.parse_args(["--validate-timeout", "2.5"]))
    assert options.validation.timeout == 2.5
    assert options_from_args(parser.parse_args([])).validation.timeout == 60.0
    with pytest.raises(InputError, match=r"^--validate-timeout must be 0 or more; "):
        options_from_args(parser.parse_args(["--validate-timeout", "-1"]))


def test_a_download_whose_workers_are_killed_completes(tmp_path):
    killed: list[int] = []
    process: list[subprocess.Popen] = []

    async def kill_workers(request: web.Request) -> web.Response:
        # The downloader's validation workers are its child processes: SIGKILL them all, the
        # way the OOM killer would, before this image is even sent.
        for child in psutil.Process(process[0].pid).children(recursive=True):
            os.kill(child.pid, signal.SIGKILL)
            killed.append(child.pid)
        return web.Response(body=images.jpeg(seed=79), content_type="image/jpeg")

    routes = {f"/img/{index}.jpg": respond(images.jpeg(seed=80 + index)) for index in range(30)}
    routes["/kill.jpg"] = kill_workers
    with LoopbackServer(routes) as server:
        rows = [(server.url(f"/img/{index}.jpg"), "a") for index in range(15)]
        rows.append((server.url("/kill.jpg"), "a"))
        rows += [(server.url(f"/img/{index}.jpg"), "b") for index in range(15, 30)]
        urls = write_list(tmp_path / "urls.csv", rows)
        out = tmp_path / "out"
        command = [sys.executable, str(SCRIPT), "--urls", str(urls), "--out", str(out),
                   "--quiet", "--workers", "2", "--concurrency", "2"]  # fmt: skip
        process.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE))  # fmt: skip
        try:
            _stdout, stderr = process[0].communicate(timeout=120)
        finally:
            process[0].kill()
    assert process[0].returncode == 0, stderr.decode()
    assert killed, "the workers were not found"
    assert [row["status"] for row in read_rows(out)] == ["ok"] * 31
    stats = json.loads((out / "download_stats.json").read_text())
    assert stats["worker_restarts"] >= 1


def test_inline_validation_ends_its_process_when_an_image_outlives_its_timeout(tmp_path):
    """A Ray shard runner validates in-line: a hung image must end it (Ray then restarts it and
    retries the shard in worker processes), not stall the shard forever."""
    code = (
        "import sys\n"
        "from imgclf.acquire.pipeline import ValidationPools\n"
        "from imgclf.acquire.validator import ValidationOptions\n"
        "from tests.acquire.crashing import HANG, validate_or_hang\n"
        "pools = ValidationPools.inline()\n"
        "options = ValidationOptions(timeout=0.5)\n"
        "good = [(open(sys.argv[1], 'rb').read(), sys.argv[2], 'good', options)]\n"
        "_pool, done = pools.workers.submit(validate_or_hang, good)\n"
        "print(done.result()[0].reason == '', flush=True)\n"
        "pools.workers.submit(validate_or_hang, [(HANG, sys.argv[2], 'hung', options)])\n"
        "print('not reached', flush=True)\n"
    )
    image = tmp_path / "good.jpg"
    image.write_bytes(images.jpeg(seed=80))
    command = [sys.executable, "-c", code, str(image), str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGALRM, done.stderr.decode()
    assert done.stdout.decode().split() == ["True"]
