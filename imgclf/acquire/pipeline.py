"""One download (or import) run: reader → fetcher → validator (worker processes) → writer.

Concurrency, bounded at every step so memory stays flat with the size of the input:
- the reader is a generator; the producer pulls the next row only when the window has room
  (`window` rows between "started" and "committed") and, for a fetch, a connection slot is free;
- each row is one asyncio task: fetch, stage the bytes as a temporary file in the target folder,
  validate it in a worker process (decode is CPU work, so it runs on every core);
- the committer takes finished tasks strictly in input order: it decides duplicates (the first row
  in input order keeps the image), renames the staged file into place, appends and flushes the
  manifest row. Input order makes the result independent of timing, so a resumed run ends with
  exactly the files and manifest of an uninterrupted one.
Ctrl-C / SIGTERM: stop reading, commit what is finished in order, drop the rest, keep earlier
runs' rows, flush, and report `interrupted`.

A shard of a distributed run (`shards.download_shard`) is one such run with `records` (its part
manifest folder) apart from `out` and `shared_out` set: other shards write into the same label
folders at the same time, so cleaning up temporaries, orphans and empty folders is left to the
driver, which knows every shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from imgclf.acquire.batching import BatchedValidator, InlinePool, WorkerPool
from imgclf.acquire.fetcher import Fetcher, FetchOptions, FetchResult
from imgclf.acquire.importer import import_rows, iter_import, scan_import
from imgclf.acquire.labels import safe_label
from imgclf.acquire.layout import (
    MANIFEST_NAME,
    PARTIAL_NAME,
    STATS_NAME,
    candidate_paths,
    relative_path,
    remove_stale_temporaries,
    url_key,
)
from imgclf.acquire.lock import exclusive_output
from imgclf.acquire.manifest import ManifestIndex, ManifestRow, ManifestWriter, recover
from imgclf.acquire.reader import InputSummary, UrlRow, iter_url_rows, scan_urls
from imgclf.acquire.reasons import DUPLICATE, FAILED, OK, STATUSES
from imgclf.acquire.stats import RunStats
from imgclf.acquire.validator import (
    ValidationOptions,
    end_process_on_hang,
    init_worker,
    stored_file_intact,
)
from imgclf.errors import InputError

REPORT_SECONDS = 0.5


@dataclass(frozen=True)
class DownloadOptions:
    """Everything a run needs; exactly one of `urls` and `import_from` is set."""

    out: Path
    urls: Path | None = None
    import_from: Path | None = None
    fetch: FetchOptions = field(default_factory=FetchOptions)
    validation: ValidationOptions = field(default_factory=ValidationOptions)
    retry_failed: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    window: int = 16_384
    progress: bool = True
    # Where manifest.csv and download_stats.json go (default: `out`).
    records: Path | None = None
    # Other runs write into `out` at the same time (a shard): leave the cleanup to their driver.
    shared_out: bool = False
    # Called with the counts about twice a second and at the end (a shard's progress report).
    report: Callable[[RunStats], None] | None = None


@dataclass
class _Job:
    row: UrlRow
    folder: str
    old: ManifestRow | None
    data: bytes | None = None  # --import: the bytes, read by the producer
    reason: str = ""  # --import: why there are no bytes (too_large, unreadable)


@dataclass
class _Outcome:
    row: ManifestRow
    staged: Path | None = None  # renamed into place when committed as ok
    reused: bool = False


@dataclass
class ValidationPools:
    """The validation workers of a run, and the one-worker pool that isolates a crash.

    A run starts its own and stops them at its end; a caller running many runs in one process
    (a shard runner of `--distributor ray`) keeps one across them, so no run pays a start.
    """

    workers: WorkerPool
    isolation: WorkerPool

    @classmethod
    def start(cls, workers: int) -> ValidationPools:
        """`workers` processes, started now (before asyncio and tqdm start threads)."""
        pools = cls(
            WorkerPool(partial(_start_workers, workers)),
            WorkerPool(partial(_start_workers, 1)),  # started only if a worker dies
        )
        pools.workers.submit(int)[1].result()
        return pools

    @classmethod
    def inline(cls) -> ValidationPools:
        """Validation in this very process (`InlinePool`): no worker, no crash isolation, and
        an image that outlives its timeout ends this process. Only for a process that is
        started again and retried when it dies (a Ray shard runner; its next life validates in
        workers, which record such an image as `validate_timeout`)."""
        end_process_on_hang()
        return cls(InlinePool(), InlinePool())

    @property
    def restarts(self) -> int:
        return self.workers.restarts + self.isolation.restarts

    def shutdown(self) -> None:
        """Stop every worker process."""
        self.workers.shutdown()
        self.isolation.shutdown()


def run_download(options: DownloadOptions, pools: ValidationPools | None = None) -> RunStats:
    """Run a whole download or import; InputError before any work if the input is bad.

    Also InputError (one sentence) when `--out` cannot be written, is a file, overlaps the
    import, or another run holds it. `pools`: validation workers to use (and leave running);
    by default the run starts `options.workers` of its own.
    """
    summary, rows = _scan_input(options)
    out = options.out
    _check_out(options)
    try:
        out.mkdir(parents=True, exist_ok=True)
        records = options.records or out
        records.mkdir(parents=True, exist_ok=True)
        # A second run into `out` stops here with one sentence (a shard locks its own folder;
        # its driver holds the lock of `out`).
        with exclusive_output(records):
            return _run_locked(options, summary, rows, pools)
    except OSError as error:
        if error.errno not in UNWRITABLE:
            raise
        where = f" {error.filename}" if error.filename else ""
        raise InputError(
            f"{out}: cannot write{where} ({error.strerror}); make --out writable or free disk "
            "space, then rerun the same command to resume."
        ) from None


def _scan_input(options: DownloadOptions) -> tuple[InputSummary, Callable[[], Iterator[UrlRow]]]:
    """Check the whole input once; return its summary and a way to read its rows again."""
    if options.import_from is not None:
        source = options.import_from
        return scan_import(source), partial(import_rows, source)
    assert options.urls is not None
    urls, ignore = options.urls, own_files(options.out)
    if urls.resolve() in ignore:
        raise InputError(f"{urls} is the manifest this download writes; pass the URL list.")
    return scan_urls(urls, ignore), partial(iter_url_rows, urls, ignore)


def _run_locked(
    options: DownloadOptions,
    summary: InputSummary,
    rows: Callable[[], Iterator[UrlRow]],
    pools: ValidationPools | None,
) -> RunStats:
    out = options.out
    records = options.records or out
    if not options.shared_out:  # a shard's driver does this for every shard
        _rename_old_label_folders(out)
        remove_stale_temporaries(out)
    previous = recover(records, rows)
    stats = RunStats(rows_total=summary.rows)
    own_pools = pools is None
    if pools is None:
        pools = ValidationPools.start(options.workers)
    restarts = pools.restarts
    completed = False
    try:
        run = _Run(options, summary, previous, pools.workers, pools.isolation, stats)
        asyncio.run(run.main())
        # Only now, complete, the new manifest replaces the previous one (atomically).
        os.replace(records / PARTIAL_NAME, records / MANIFEST_NAME)
        completed = True
    finally:
        stats.worker_restarts = pools.restarts - restarts
        if own_pools:
            pools.shutdown()
        # A failed run (disk full, ...) keeps its partial manifest for the rerun: no error here
        # may hide the one that stopped it.
        with contextlib.suppress(*(() if completed else (OSError,))):
            if (stats.interrupted or not completed) and not options.shared_out:
                remove_stale_temporaries(out)  # staged by workers for rows that were dropped
            if stats.finished is None:
                stats.finished = time.time()
            stats.save(records / STATS_NAME)
    return stats


# What a read-only folder, missing permission or a full disk raise.
UNWRITABLE = frozenset(
    {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
)


def _check_out(options: DownloadOptions) -> None:
    """InputError when --out cannot be the output folder of this run."""
    out = options.out
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out {out}: {parent} is a file, not a folder; pass a folder.")
            break
    source = options.import_from
    if source is not None and source.is_dir():
        inside = out.resolve().is_relative_to(source.resolve())
        if inside or source.resolve().is_relative_to(out.resolve()):
            raise InputError(
                f"--out {out} and --import {source} overlap, so the import would read its own "
                "output; choose an --out outside the imported folder."
            )


def _rename_old_label_folders(out: Path) -> None:
    """Move a label folder named like one of our files (made by an older version) to its name now.

    Before labels were kept off those names, a label `download_stats.json` got that folder, and
    the stats file could never be written again.
    """
    for name in (MANIFEST_NAME, STATS_NAME):
        folder = out / name
        if folder.is_dir():
            target = out / safe_label(name)
            if target.exists():
                raise InputError(
                    f"{folder} is a folder (the label {name!r} of an older version) and {target} "
                    "exists too; merge them into the second, then rerun."
                )
            os.rename(folder, target)


def own_files(out: Path) -> frozenset[Path]:
    """The files a download into `out` writes that a URL-list reader could mistake for lists."""
    return frozenset((out / name).resolve() for name in (MANIFEST_NAME, PARTIAL_NAME))


def _start_workers(workers: int) -> ProcessPoolExecutor:
    """Start every worker now, before asyncio or tqdm start threads of their own.

    fork is the fastest start, but forking a process in which other threads run (a caller's
    server, a test) can deadlock the child; such callers get forkserver workers instead.
    """
    if sys.platform == "linux" and threading.active_count() == 1:
        context = multiprocessing.get_context("fork")
    else:
        context = multiprocessing.get_context("forkserver" if sys.platform != "win32" else "spawn")
        if context.get_start_method() == "forkserver":
            context.set_forkserver_preload(["imgclf.acquire.validator"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker)


class _Run:
    def __init__(
        self,
        options: DownloadOptions,
        summary: InputSummary,
        previous: Path | None,
        workers: WorkerPool,
        isolation: WorkerPool,
        stats: RunStats,
    ) -> None:
        self.options = options
        self.out = options.out
        self.folders = summary.folders
        self.previous = ManifestIndex(previous) if previous else None
        self.workers = workers
        self.validator = BatchedValidator(workers, isolation)
        self.stats = stats
        self.seen: dict[str, tuple[str, str]] = {}  # sha256 -> (url, label) of the kept image
        self.stored: set[str] = set()  # paths committed as ok in this run
        self.made_folders: set[str] = set()
        self.queue: deque[tuple[_Job, asyncio.Task[_Outcome]]] = deque()
        self.producing = True
        self.stopping = False
        self.waiting_job: _Job | None = None  # read from the input, not queued yet
        self.reported = 0.0  # when `options.report` was last called

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self.window = asyncio.Semaphore(self.options.window)
        self.slots = asyncio.Semaphore(self.options.fetch.concurrency)
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._request_stop, signum)
        self.writer = ManifestWriter((self.options.records or self.out) / PARTIAL_NAME)
        self.progress = tqdm(
            total=self.stats.rows_total,
            unit="url",
            desc="download",
            disable=not self.options.progress,
            dynamic_ncols=True,
            smoothing=0.05,
        )
        try:
            async with Fetcher(self.options.fetch) as fetcher:
                self.fetcher = fetcher
                producer = asyncio.create_task(self._produce())
                try:
                    await self._commit_in_order()
                except BaseException:
                    await self._abandon(producer)
                    raise
                if self.stopping:
                    producer.cancel()
                    await self._drop_unfinished()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
        finally:
            await self.validator.aclose()
            self.progress.close()
            self.writer.close()
            if self.previous is not None:
                self.previous.close()
            self._remove_empty_folders()
            self.stats.interrupted = self.stopping
            self.stats.finished = time.time()
            if self.options.report is not None:
                self.options.report(self.stats)

    def _remove_empty_folders(self) -> None:
        """A label whose every row failed or was a duplicate must not leave an empty class."""
        if self.options.shared_out:
            return  # another shard may be about to store an image there
        for folder in self.made_folders:
            with contextlib.suppress(OSError):
                (self.out / folder).rmdir()

    def _request_stop(self, signum: int) -> None:
        self.stopping = True
        self.changed.set()
        # A second Ctrl-C falls back to Python's default: an immediate KeyboardInterrupt.
        asyncio.get_running_loop().remove_signal_handler(signum)

    # -- producer ---------------------------------------------------------------------------

    def _jobs(self) -> Iterator[_Job]:
        if self.options.import_from is not None:
            members = iter_import(self.options.import_from, self.options.fetch.max_bytes)
            for row, data, reason in members:
                yield _Job(row, self.folders[row.label], self._old(row), data, reason)
        else:
            assert self.options.urls is not None
            for row in iter_url_rows(self.options.urls, own_files(self.out)):
                yield _Job(row, self.folders[row.label], self._old(row))

    def _old(self, row: UrlRow) -> ManifestRow | None:
        return self.previous.take(row) if self.previous else None

    async def _produce(self) -> None:
        try:
            for job in self._jobs():
                self.waiting_job = job
                await self.window.acquire()
                fetch_now = not job.row.reason and self._must_fetch(job.old)
                if fetch_now:
                    await self.slots.acquire()
                task = asyncio.create_task(self._process(job, fetch_now))
                task.add_done_callback(lambda _task: self.changed.set())
                self.queue.append((job, task))
                self.waiting_job = None
                if self.stopping:
                    break
        finally:
            self.producing = False
            self.changed.set()

    def _must_fetch(self, old: ManifestRow | None) -> bool:
        """Without a usable earlier row the URL is fetched; ok rows are checked on disk first."""
        if old is None or old.status not in STATUSES:
            return True  # no earlier row, or one this version does not know: fetch
        if old.status == FAILED:
            return self.options.retry_failed
        return False

    # -- one row ----------------------------------------------------------------------------

    async def _process(self, job: _Job, holds_slot: bool) -> _Outcome:
        if job.row.reason:  # refused as read (url_too_long): nothing to fetch
            return _Outcome(_failed(job.row, job.row.reason, 0))
        old = job.old
        if old is not None and not holds_slot:
            if old.status != OK or await self._intact(job, old):
                return _Outcome(old, reused=True)
            await self.slots.acquire()  # the stored file is gone or damaged: fetch it again
        try:
            result = await self._obtain(job)
        finally:
            self.slots.release()
        if result.body is None:
            return _Outcome(_failed(job.row, result.reason, result.attempts))
        return await self._validate(job, result)

    async def _intact(self, job: _Job, old: ManifestRow) -> bool:
        """True when the old row's file is where this row's file belongs, with its bytes.

        A path elsewhere (an edited manifest: `../`, another label's folder) is never read.
        """
        expected = candidate_paths(self.out, job.folder, url_key(job.row.url))
        if self.out / old.path not in expected:
            return False
        path = str(self.out / old.path)
        check = stored_file_intact, path, old.sha256, old.bytes if old.bytes is not None else -1
        for _attempt in range(2):  # a worker dying meanwhile breaks this check too: once more
            pool, future = self.workers.submit(*check)
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self.workers.replace(pool)
        return False  # cannot tell: fetch it again

    async def _obtain(self, job: _Job) -> FetchResult:
        if self.options.import_from is None:
            return await self.fetcher.fetch(job.row.url)
        data, job.data = job.data, None
        return FetchResult(data, job.reason, 1)

    async def _validate(self, job: _Job, result: FetchResult) -> _Outcome:
        assert result.body is not None
        if job.folder not in self.made_folders:
            (self.out / job.folder).mkdir(parents=True, exist_ok=True)
            self.made_folders.add(job.folder)
        key = url_key(job.row.url)
        directory = str(self.out / job.folder)
        verdict = await self.validator.validate(
            result.body, directory, key, self.options.validation
        )
        if verdict.reason:
            return _Outcome(_failed(job.row, verdict.reason, result.attempts))
        row = ManifestRow(
            url=job.row.url,
            label=job.row.label,
            split=job.row.split,
            status=OK,
            path=relative_path(job.folder, key, verdict.ext),
            sha256=verdict.sha256,
            width=verdict.width,
            height=verdict.height,
            bytes=verdict.size,
            attempts=result.attempts,
        )
        return _Outcome(row, staged=Path(verdict.staged))

    # -- committer --------------------------------------------------------------------------

    async def _commit_in_order(self) -> None:
        while True:
            if self.queue and self.queue[0][1].done():
                job, task = self.queue.popleft()
                self.window.release()
                self._commit(job, task.result())
                continue
            if self.stopping or (not self.queue and not self.producing):
                return
            self.writer.flush()  # everything committed so far survives a kill from here on
            self.changed.clear()
            await self.changed.wait()

    def _commit(self, job: _Job, outcome: _Outcome) -> None:
        row, written = outcome.row, False
        if row.status in (OK, DUPLICATE):
            kept = self.seen.get(row.sha256)
            if kept is None and row.status == OK:
                if outcome.staged is not None:
                    os.replace(outcome.staged, self.out / row.path)
                    written = True
                self.seen[row.sha256] = (row.url, row.label)
                self.stored.add(row.path)
            elif kept is not None:
                if outcome.staged is not None:
                    outcome.staged.unlink(missing_ok=True)
                row = dataclasses.replace(
                    row, status=DUPLICATE, reason="duplicate", path="", duplicate_of=kept[0]
                )
                if kept[1] != row.label:
                    self.stats.add_conflict(row, kept[1])
        if row.status != OK:
            self._remove_orphans(job)
        self.writer.write(row)
        self.stats.add(row, reused=outcome.reused, written=written)
        self.progress.update()
        if self.options.report is not None and time.monotonic() - self.reported > REPORT_SECONDS:
            self.reported = time.monotonic()
            self.options.report(self.stats)

    def _remove_orphans(self, job: _Job) -> None:
        """A row that is not ok owns no file: remove one a killed or earlier run left behind.

        With `shared_out` the file may belong to the same URL in another shard: it is only
        listed in `stats.unowned`, and the driver removes it if no row of the merged manifest
        owns it.
        """
        for path in candidate_paths(self.out, job.folder, url_key(job.row.url)):
            relative = path.relative_to(self.out).as_posix()
            if relative in self.stored:
                continue
            if not self.options.shared_out:
                path.unlink(missing_ok=True)
            elif path.exists():
                self.stats.unowned.append(relative)

    async def _abandon(self, producer: asyncio.Task[None]) -> None:
        """The run failed (disk full, ...): stop every task and collect what they raised, so
        nothing is reported twice as an unretrieved task exception."""
        tasks = [producer, *(task for _job, task in self.queue)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drop_unfinished(self) -> None:
        """After Ctrl-C: cancel what is in flight, keep earlier runs' rows for it and the rest."""
        tasks = [task for _job, task in self.queue]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job, task in self.queue:
            if task.done() and not task.cancelled() and task.exception() is None:
                staged = task.result().staged
                if staged is not None:
                    staged.unlink(missing_ok=True)
            if job.old is not None:
                self.writer.write(job.old)
        self.queue.clear()
        if self.waiting_job is not None and self.waiting_job.old is not None:
            self.writer.write(self.waiting_job.old)
        if self.previous is not None:
            for old in self.previous.rest():
                self.writer.write(old)


def _failed(row: UrlRow, reason: str, attempts: int) -> ManifestRow:
    return ManifestRow(row.url, row.label, row.split, FAILED, reason, attempts=attempts)
