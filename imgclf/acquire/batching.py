"""Hand validation work to the worker processes in batches, from asyncio; survive dying workers.

A `ProcessPoolExecutor` round trip (pickle, pipe write, a wakeup of its manager thread, result
future) costs about as much main-process CPU as fetching a small image, and that CPU competes
with the event loop for the GIL. Jobs submitted during one event-loop iteration therefore go out
together as one batch (at most `max_batch`): under load the batches grow by themselves, when idle
a job leaves at once.

A worker can die (the OOM killer, a decoder crash): the pool is then broken and every batch in it
fails with `BrokenProcessPool`. `WorkerPool` starts a fresh pool; the items of the failed batches
are retried once, each alone in a one-worker pool, so an innocent neighbour of the culprit is
never blamed. An item that kills that worker as well is recorded as `worker_crashed`, or as
`validate_timeout` when the worker died at its time limit: a worker that hangs on an image is
ended by its per-image timer (`ValidationOptions.timeout`, see `validator`), and alone in its
pool the retried image's time is known, so a death at or after the limit was the timer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from imgclf.acquire.validator import (
    ValidationOptions,
    Verdict,
    use_own_pixel_limit,
    validate_batch,
)

Item = tuple[bytes, str, str, ValidationOptions]
BatchFunction = Callable[[list[Item]], list[Verdict]]
WORKER_CRASHED = "worker_crashed"
VALIDATE_TIMEOUT = "validate_timeout"


class WorkerPool:
    """A process pool that is replaced by a fresh one when a worker dies.

    `start()` builds a pool; it is called again after a break (once per broken pool, however
    many of its futures report the break).
    """

    def __init__(self, start: Callable[[], ProcessPoolExecutor]) -> None:
        self._start = start
        self.pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def submit(
        self, function: Callable[..., Any], *args: Any
    ) -> tuple[ProcessPoolExecutor, Future]:
        """Submit to the current pool (rebuilt first if it is broken); returns (pool, future)."""
        if self.pool is None:
            self.pool = self._start()
        pool = self.pool
        try:
            return pool, pool.submit(function, *args)
        except BrokenProcessPool:  # it broke before this call noticed: no item of ours ran
            self.replace(pool)
            assert self.pool is not None
            return self.pool, self.pool.submit(function, *args)

    def replace(self, broken: ProcessPoolExecutor) -> None:
        """Swap `broken` for a fresh pool, unless that was done already."""
        if self.pool is not broken:
            return
        self.pool = None
        self.restarts += 1
        broken.shutdown(wait=False, cancel_futures=True)
        self.pool = self._start()

    def shutdown(self) -> None:
        """Stop the workers (waiting for them) and drop queued work."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


class InlinePool(WorkerPool):
    """Runs each submitted call at once in this process: for a process that already has a
    core of its own (a Ray shard runner), where a round trip to a worker only costs CPU.

    Nothing isolates a crash here: a decoder that kills the process kills its caller.
    """

    def __init__(self) -> None:
        use_own_pixel_limit()
        super().__init__(lambda: ProcessPoolExecutor(1))  # never called

    def submit(
        self, function: Callable[..., Any], *args: Any
    ) -> tuple[ProcessPoolExecutor, Future]:
        future: Future = Future()
        try:
            future.set_result(function(*args))
        except Exception as error:
            future.set_exception(error)
        return self.pool, future  # type: ignore[return-value]

    def replace(self, broken: ProcessPoolExecutor) -> None:
        """Nothing to replace: no worker process can break."""

    def shutdown(self) -> None:
        """Nothing to stop."""


class BatchedValidator:
    """`await validate(data, directory, key, options)` runs `validate_and_stage` in a worker."""

    def __init__(
        self,
        workers: WorkerPool,
        isolation: WorkerPool,
        max_batch: int = 32,
        run_batch: BatchFunction = validate_batch,
    ) -> None:
        """`isolation` is a one-worker pool for retries; `run_batch` must be importable."""
        self.workers = workers
        self.isolation = isolation
        self.max_batch = max_batch
        self.run_batch = run_batch
        self.crashes = 0  # batches lost to a dying worker
        self._items: list[Item] = []
        self._futures: list[asyncio.Future[Verdict]] = []
        self._isolated = asyncio.Lock()
        self._retries: set[asyncio.Task[None]] = set()

    def validate(
        self, data: bytes, directory: str, key: str, options: ValidationOptions
    ) -> asyncio.Future[Verdict]:
        """Queue one image; the future resolves to its Verdict."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        self._items.append((data, directory, key, options))
        self._futures.append(future)
        if len(self._items) == 1:
            loop.call_soon(self._send)
        elif len(self._items) >= self.max_batch:
            self._send()
        return future

    def _send(self) -> None:
        if not self._items:
            return
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        pool, submitted = self.workers.submit(self.run_batch, items)
        batch = asyncio.wrap_future(submitted)
        batch.add_done_callback(lambda done: self._deliver(done, pool, items, futures))

    def _deliver(
        self,
        batch: asyncio.Future[list[Verdict]],
        pool: ProcessPoolExecutor,
        items: list[Item],
        futures: list[asyncio.Future[Verdict]],
    ) -> None:
        error = None if batch.cancelled() else batch.exception()
        if isinstance(error, BrokenProcessPool):
            self.crashes += 1
            self.workers.replace(pool)
            task = asyncio.get_running_loop().create_task(self._retry_alone(items, futures))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        for index, future in enumerate(futures):
            if future.done():  # its row was dropped meanwhile (Ctrl-C)
                continue
            if batch.cancelled():
                future.cancel()
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(batch.result()[index])

    async def _retry_alone(
        self, items: list[Item], futures: list[asyncio.Future[Verdict]]
    ) -> None:
        """Validate each item of a lost batch once more, one at a time in its own worker."""
        for item, future in zip(items, futures, strict=True):
            if future.done():
                continue
            async with self._isolated:  # one item at a time: a crash names its culprit
                started = time.monotonic()
                pool, submitted = self.isolation.submit(self.run_batch, [item])
                try:
                    verdict = (await asyncio.wrap_future(submitted))[0]
                except BrokenProcessPool:
                    self.isolation.replace(pool)
                    verdict = Verdict(death_reason(item, time.monotonic() - started))
                except Exception as error:
                    if not future.done():
                        future.set_exception(error)
                    continue
            if not future.done():
                future.set_result(verdict)

    async def aclose(self) -> None:
        """Wait for retries still running (they resolve or cancel their futures)."""
        for task in list(self._retries):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def death_reason(item: Item, seconds: float) -> str:
    """Why the worker validating `item` alone died after `seconds`: its timer, or a crash."""
    limit = item[3].timeout
    return VALIDATE_TIMEOUT if 0 < limit <= seconds else WORKER_CRASHED
