"""`--distributor ray`: the shards of `shards.py` run on long-lived Ray actors, one per task slot.

The driver (this process) checks the list, connects to Ray (or starts a local cluster), starts
one shard runner per task slot (an actor holding a core for the whole run) while it checks that
every node sees and can write `--out`, then cuts the list into shards lazily and keeps at most
two shards per runner in flight, so its memory does not grow with the list. A runner runs one
shard after another, each today's fetch + validate pipeline (`shards.download_shard`) committed
with a done marker; it keeps its validation set-up across shards, so a shard costs tens of
milliseconds on top of its rows. A runner whose process dies (killed, out of memory, node lost)
is started again by Ray and its shards, like a shard that raised, are run again up to
`max_shard_retries` times; they resume from their part manifests, so rows already committed are
not fetched again. Shards that still fail are collected and reported; the merge into
`<out>/manifest.csv` happens only once every shard is committed. Progress: runners report their
counts to a small actor, and one bar shows all shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from imgclf.acquire.layout import remove_stale_temporaries
from imgclf.acquire.lock import exclusive_output
from imgclf.acquire.manifest import recover
from imgclf.acquire.pipeline import DownloadOptions, ValidationPools, own_files
from imgclf.acquire.reader import iter_url_rows, scan_urls
from imgclf.acquire.reasons import FAILED
from imgclf.acquire.shards import (
    DEFAULT_SHARD_SIZE,
    DONE_NAME,
    SHARDS_DIR,
    Shard,
    count_done,
    cut_shards,
    download_shard,
    finish,
    merge_parts,
    read_json,
    save_stats,
    shard_dir,
)
from imgclf.acquire.stats import RunStats
from imgclf.errors import InputError

CONNECT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 120.0
TICK_S = 0.5
TASKS_PER_SLOT = 2  # one running, one queued: no idle slot between two shards


@dataclass(frozen=True)
class RayOptions:
    """How the shards run: the cluster (None: a local one), rows per shard, retries."""

    address: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    max_shard_retries: int = 3
    task_cpus: float = 1.0


class ShardsFailed(Exception):
    """Some shards failed after every retry; the message names them (rerun to retry them)."""


def run_distributed(options: DownloadOptions, ray_options: RayOptions) -> RunStats:
    """A whole download on Ray; InputError (nothing written) for a bad list, cluster or --out."""
    if options.import_from is not None:
        raise InputError(
            "--import reads one local archive and runs on this machine; leave out "
            "--distributor ray."
        )
    assert options.urls is not None
    urls, ignore = options.urls, own_files(options.out)
    if urls.resolve() in ignore:
        raise InputError(f"{urls} is the manifest this download writes; pass the URL list.")
    summary = scan_urls(urls, ignore)
    # Workers on other machines see the same path only if it is absolute.
    out = options.out.resolve()
    show = options.progress
    options = dataclasses.replace(options, out=out, progress=False)
    check = _OutCheck(out)
    check.here()
    try:
        started = _connect(ray_options.address)
    except InputError:
        check.undo()
        raise
    runners: list[Any] = []
    try:
        # Their processes start (and import this code) while the nodes are checked.
        runners = _start_runners(ray_options)
        check.on_nodes()
        with exclusive_output(out):  # one download per --out, as on one machine
            return _run_locked(
                options, ray_options, runners, summary.rows, ignore, show, summary.folders
            )
    finally:
        for runner in runners:  # also stops the shards they run (Ctrl-C, a failure)
            ray.kill(runner)
        if started:
            ray.shutdown()


def _start_runners(ray_options: RayOptions) -> list[Any]:
    """One shard runner per task slot of the cluster, for the whole run.

    A runner whose process dies is started again and its shards are run again on it (they
    resume from their part manifests); a shard that raises is retried the same way.
    """
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) / ray_options.task_cpus))
    return [
        _ShardRunner.options(  # type: ignore[attr-defined]
            num_cpus=ray_options.task_cpus,
            max_restarts=-1,
            max_task_retries=ray_options.max_shard_retries,
        ).remote()
        for _ in range(slots)
    ]


def _run_locked(
    options: DownloadOptions,
    ray_options: RayOptions,
    runners: list[Any],
    rows: int,
    ignore: frozenset[Path],
    show: bool,
    folders: dict[str, str],
) -> RunStats:
    out, urls = options.out, options.urls
    assert urls is not None
    stats = RunStats(rows_total=rows)
    remove_stale_temporaries(out)
    previous = recover(out, lambda: iter_url_rows(urls, ignore))
    shards = cut_shards(
        iter_url_rows(urls, ignore), ray_options.shard_size, out, previous, options.retry_failed
    )
    with _interrupt_on_sigterm():
        count = _Driver(options, ray_options, runners, stats, show).run(shards)
    if stats.interrupted:
        save_stats(out, stats)
        return stats
    merge_parts(out, count, stats)  # replaces the earlier manifest atomically
    stats.finished = time.time()
    save_stats(out, stats)
    finish(out, folders.values())
    return stats


class _Driver:
    """Hands the shard runners their shards (at most TASKS_PER_SLOT each at a time), collects
    the results, draws the bar; Ctrl-C stops them all."""

    def __init__(
        self,
        options: DownloadOptions,
        ray_options: RayOptions,
        runners: list[Any],
        stats: RunStats,
        show: bool,
    ) -> None:
        self.options = options
        self.ray_options = ray_options
        self.runners = runners
        self.stats = stats
        self.show = show
        self.pending: dict[Any, tuple[Shard, int]] = {}  # result -> (shard, runner)
        self.failures: list[tuple[Shard, str]] = []

    def run(self, shards: Iterator[Shard]) -> int:
        """Run every shard; returns how many there are. Raises ShardsFailed at the end."""
        board = _ProgressBoard.options(num_cpus=0).remote()  # type: ignore[attr-defined]
        runners = self.runners
        load = [0] * len(runners)  # shards handed to each runner and not collected yet
        bar = tqdm(
            total=self.stats.rows_total,
            unit="url",
            desc="download",
            disable=not self.show,
            dynamic_ncols=True,
        )
        done = RunStats()
        count, exhausted = 0, False
        try:
            while True:
                while not exhausted and min(load) < TASKS_PER_SLOT:
                    shard = next(shards, None)
                    if shard is None:
                        exhausted = True
                        break
                    count += 1
                    if shard.done:
                        count_done(done, _marker(self.options.out, shard))
                        continue
                    runner = load.index(min(load))
                    load[runner] += 1
                    result = runners[runner].run.options(retry_exceptions=True)
                    self.pending[result.remote(shard, self.options, board)] = (shard, runner)
                if exhausted and not self.pending:
                    break
                ready, _ = ray.wait(
                    list(self.pending), num_returns=len(self.pending), timeout=TICK_S
                )
                for ref in ready:
                    load[self._collect(ref, done, board)] -= 1
                self._draw(bar, done, board)
        except KeyboardInterrupt:
            self._interrupted(done)
            return count
        finally:
            bar.close()
            for actor in (*runners, board):  # stopped before the lock of --out is let go
                ray.kill(actor)
        if self.failures:
            raise ShardsFailed(self._failure_message())
        return count

    def _collect(self, ref: Any, done: RunStats, board: Any) -> int:
        """Count a finished shard (or its failure); returns the runner it ran on."""
        shard, runner = self.pending.pop(ref)
        board.forget.remote(shard.index)
        try:
            count_done(done, ray.get(ref))
        except RayError as error:
            self.failures.append((shard, _last_line(error)))
        return runner

    def _draw(self, bar: tqdm, done: RunStats, board: Any) -> None:
        if not self.show:
            return
        running = ray.get(board.counts.remote())
        shards = {shard.index for shard, _runner in self.pending.values()}
        live = [counts for index, counts in running.items() if index in shards]
        rows = done.rows_done + sum(c[0] for c in live)
        failed = done.by_status[FAILED] + sum(c[1] for c in live)
        written = done.images_written + sum(c[2] for c in live)
        seconds = max(time.time() - self.stats.started, 1e-9)
        bar.update(rows - bar.n)
        bar.set_postfix(failed=f"{failed:,}", images_s=f"{written / seconds:,.0f}", refresh=True)

    def _interrupted(self, done: RunStats) -> None:
        """After Ctrl-C the summary shows the committed shards (the merge waits for a rerun)."""
        self.stats.by_status, self.stats.reused = done.by_status, done.reused
        self.stats.images_written = done.images_written
        self.stats.interrupted = True
        self.stats.finished = time.time()

    def _failure_message(self) -> str:
        retries = self.ray_options.max_shard_retries
        listed = "; ".join(f"shard {shard.index} ({why})" for shard, why in self.failures[:5])
        more = f" and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        return (
            f"{len(self.failures)} shard(s) failed after {retries} retries: {listed}{more}; "
            "the finished shards are kept, rerun the same command to retry the rest."
        )


@ray.remote
class _ShardRunner:
    """One per task slot for the whole run: runs shards one after another, each the whole
    fetch + validate pipeline and then its done marker.

    Ray gives it a core of its own, so with `--workers 1` (the default) it validates in its
    own process: no worker process to start, no round trip per image (1.4x the URLs/s of one
    worker process per runner, 2 cores, docs/benchmarks.md). A runner started again after its
    process died (a decoder crash, or its own timer ending an image that hung) validates in
    worker processes instead, so that such an image is recorded as `worker_crashed` or
    `validate_timeout` rather than ending it again.
    `--workers N` > 1 gives every runner N worker processes, kept across its shards.
    """

    def __init__(self) -> None:
        self.pools: ValidationPools | None = None

    def run(self, shard: Shard, options: DownloadOptions, board: Any) -> dict[str, Any]:
        if self.pools is None:
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
            inline = options.workers <= 1 and not restarted
            self.pools = (
                ValidationPools.inline() if inline else ValidationPools.start(options.workers)
            )

        def report(stats: RunStats) -> None:
            counts = (stats.rows_done, stats.by_status[FAILED], stats.images_written)
            board.update.remote(shard.index, counts)

        return download_shard(shard, options, report, self.pools)


@ray.remote
class _ProgressBoard:
    """The latest counts (rows, failed, written) of each running shard."""

    def __init__(self) -> None:
        self._counts: dict[int, tuple[int, int, int]] = {}

    def update(self, index: int, counts: tuple[int, int, int]) -> None:
        self._counts[index] = counts

    def forget(self, index: int) -> None:
        self._counts.pop(index, None)

    def counts(self) -> dict[int, tuple[int, int, int]]:
        return self._counts


@ray.remote
def _probe(out: str, token: str) -> str:
    """On one node: '' if it sees the driver's token in `out` and can write there."""
    host = socket.gethostname()
    if not (Path(out) / SHARDS_DIR / token).exists():
        return (
            f"{host} does not see {out} as the driver does (no shared filesystem there?); "
            "mount the same folder on every node."
        )
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-", suffix=".tmp"):
            pass
    except OSError as error:
        return f"{host} cannot write {out} ({error.strerror}); make it writable on every node."
    return ""


def _connect(address: str | None) -> bool:
    """Join the cluster at `address` (None: start a local one); True if this call started Ray."""
    if address and address != "auto":
        _require_reachable(address)
    if ray.is_initialized():
        return False  # a caller (a test, a notebook) is already connected: use its cluster
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            # "local": a new cluster even if a stale `ray start` left its address behind.
            ray.init(
                address="local",
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        if not address:
            raise InputError(
                f"a local Ray cluster: cannot start ({_last_line(error)}); see the Ray error "
                "above, or leave out --distributor ray."
            ) from None
        raise InputError(
            f"--ray-address {address}: cannot connect ({_last_line(error)}); start a cluster "
            "with `ray start --head`, or, if it uses token authentication, set "
            "RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN) here."
        ) from None
    return True


def _require_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's long retries, when nothing listens at `address`."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise InputError(
            f"--ray-address {address}: expected host:port, ray://host:port or auto; "
            "pass the address `ray start --head` printed."
        )
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InputError(
            f"--ray-address {address}: no Ray cluster answers there ({reason}); start one with "
            "`ray start --head` or correct the address."
        ) from None


class _OutCheck:
    """`--out` is checked before any work: first here, then on every alive node (it must be
    the same, writable folder there: a shared filesystem). On failure nothing is left behind."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.created = [path for path in (out, *out.parents) if not path.exists()]
        self.state = out / SHARDS_DIR
        self.made_state = not self.state.exists()
        self.token = f".probe-{uuid.uuid4().hex}"

    def here(self) -> None:
        """The driver can create `out` and write in it; leaves a token for the nodes to find."""
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            (self.state / self.token).write_bytes(b"")
        except OSError as error:
            self.undo()
            raise InputError(
                f"--out {self.out}: cannot be written ({error.strerror}); pass a folder this "
                "machine and every Ray worker can write."
            ) from None

    def on_nodes(self) -> None:
        """Every alive node sees the token and can write `out`."""
        try:
            nodes = [node for node in ray.nodes() if node.get("Alive")]
            probes = [
                _probe.options(  # type: ignore[attr-defined]
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], False),
                ).remote(str(self.out), self.token)
                for node in nodes
            ]
            problems = [text for text in ray.get(probes, timeout=PROBE_TIMEOUT_S) if text]
        finally:
            (self.state / self.token).unlink(missing_ok=True)
        if problems:
            self.undo()
            raise InputError(f"--out {self.out}: {problems[0]}")

    def undo(self) -> None:
        """Remove what the check made: the state folder and the folders of `--out` it created."""
        if self.made_state:
            shutil.rmtree(self.state, ignore_errors=True)
        for path in self.created:  # innermost first, and only if empty
            with contextlib.suppress(OSError):
                path.rmdir()


def _marker(out: Path, shard: Shard) -> dict[str, Any]:
    marker = read_json(shard_dir(out, shard.index) / DONE_NAME)
    assert marker is not None
    return marker


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the driver as Ctrl-C does (exit 130, rerun to resume)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _last_line(error: BaseException) -> str:
    """The message of an error whose text may carry a whole remote traceback."""
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
