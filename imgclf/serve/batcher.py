"""Micro-batching: images of concurrent requests gathered into one engine call.

Requests put their images (the uploaded bytes) on an asyncio queue; one task takes the first
waiting image, gathers more until the batch is full or `max_wait_ms` have passed, and runs the
engine on the list in a thread of its own (for the service: one round trip to the inference
process), so the event loop keeps accepting meanwhile. Images that arrive during an engine call
form the next batch at once.

The batcher only waits while more images are on their way (announced with `expect` by a request
whose body is still arriving or whose URLs are being fetched): a lone client's image goes to the
engine at once instead of sitting out the maximum wait.

With several engines (`EngineSlots`: for the service, one per inference process) a batch
starts as soon as an engine is free, so batches overlap, one per engine, and a batch takes at
most its engine's share of the images in flight (the most seen at once lately, divided by the
engines). Without that share, clients that wait for their answers clump into uneven batches:
32 clients on 2 engines settled into batches of about 20 and 12, and the engine with the small
batch sat idle waiting for its clients to come back (32 clients, 2 cores: 1.23-1.27x the
requests/s with batches capped at a share; docs/serve.md).

An image whose request gave up (deadline, disconnect) is dropped before the engine sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from imgclf.serve.service_metrics import ServiceMetrics


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future = field(repr=False)


class Expected:
    """Images a request announced and has not yet queued (see MicroBatcher.expect)."""

    def __init__(self, batcher: MicroBatcher, count: int) -> None:
        self._batcher = batcher
        self.left = count

    def settle(self) -> None:
        """One announced image was queued or refused: stop waiting for it."""
        self.left -= 1
        self._batcher._expected -= 1
        self._batcher._wake()


class EngineSlots:
    """`count` engines, each running one batch at a time on a thread of its own; shared by
    the batchers of one service, so /predict and /search batches take turns on them."""

    def __init__(self, count: int = 1) -> None:
        self.executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"imgclf-engine{n}") for n in range(count)
        ]
        self._free: asyncio.Queue[int] | None = None

    def __len__(self) -> int:
        return len(self.executors)

    async def acquire(self) -> int:
        """Wait for a free engine; its number (give it back with `release`)."""
        if self._free is None:  # created on the running loop
            self._free = asyncio.Queue()
            for number in range(len(self.executors)):
                self._free.put_nowait(number)
        return await self._free.get()

    @property
    def busy(self) -> int:
        """Engines running a batch (or held for one being gathered) right now."""
        if self._free is None:
            return 0
        return len(self.executors) - self._free.qsize()

    def release(self, number: int) -> None:
        """Engine `number` is free again."""
        assert self._free is not None
        self._free.put_nowait(number)

    def run(self, number: int, function: Callable, *args) -> asyncio.Future:
        """`function(*args)` on engine `number`'s thread."""
        return asyncio.get_running_loop().run_in_executor(self.executors[number], function, *args)

    def shutdown(self) -> None:
        """Stop the engine threads (after their last batch)."""
        for executor in self.executors:
            executor.shutdown(wait=True)


class RecentPeak:
    """The largest value seen in the last one to two windows of `window_s` seconds: how many
    images are in flight at once lately, long against a batch's round trip (tens of ms) and
    short against a change of load."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._started = -math.inf
        self._current = 0
        self._previous = 0

    def see(self, value: int, now: float) -> int:
        """Record `value` at time `now` (seconds, monotonic); the peak so far."""
        if now - self._started >= self.window_s:
            recent = now - self._started < 2 * self.window_s
            self._previous = self._current if recent else 0
            self._current = 0
            self._started = now
        self._current = max(self._current, value)
        return max(self._current, self._previous)


@dataclass(frozen=True)
class Scored:
    """One image's result from `run_batch` and the size of the batch it ran in."""

    result: Any
    batch_size: int


class MicroBatcher:
    """`await score(item)` → Scored; batches of at most `max_batch_size` items.

    `run_batch(engine, items)` maps a list of items to one result per item, in order, on
    engine number `engine` of `engines` (for the service: image bytes to ItemResults, in that
    engine's inference process, imgclf.serve.inference_process)."""

    def __init__(
        self,
        run_batch: Callable[[int, list[Any]], list[Any]],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        metrics: ServiceMetrics,
        engines: EngineSlots | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1e3
        self.metrics = metrics
        self.engines = engines or EngineSlots(1)
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._expected = 0
        self._in_flight = 0  # submitted, not yet answered (or withdrawn)
        self._in_flight_peak = RecentPeak()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        """Start the gathering task on the running loop."""
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._gather_forever())

    async def stop(self) -> None:
        """Stop gathering (after the requests are drained) and the engine threads."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.wait(self._running)
        self.engines.shutdown()

    @contextlib.contextmanager
    def expect(self, count: int) -> Iterator[Expected]:
        """Announce `count` images being decoded, so a batch waits for them; the block's end
        withdraws those that never came (refused, or the request gave up)."""
        expected = Expected(self, count)
        self._expected += count
        try:
            yield expected
        finally:
            self._expected -= expected.left
            self._wake()

    def _wake(self) -> None:
        """Let a waiting batch look again: an image arrived or an expected one will not."""
        if self._arrived is not None:
            self._arrived.set()

    def submit(self, item: Any) -> asyncio.Future[Scored]:
        """Queue one item now; the future resolves to its Scored (cancel it to withdraw)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._in_flight += 1
        # Not with the announced images: this one may be one of them until its request
        # settles (batch_limit never runs in between, it sees them apart).
        self._in_flight_peak.see(self._in_flight, loop.time())
        future.add_done_callback(self._answered)
        self._queue.put_nowait(_Waiting(item, future))
        self.metrics.queue_depth.set(self._queue.qsize())
        self._wake()
        return future

    def _answered(self, _future: asyncio.Future) -> None:
        self._in_flight -= 1

    def _images_in_flight(self) -> int:
        return self._in_flight + max(0, self._expected)

    def batch_limit(self) -> int:
        """The most images the next batch takes: `max_batch_size`, or with several engines
        each one's share of the images in flight lately, so that every engine gets a batch."""
        peak = self._in_flight_peak.see(
            self._images_in_flight(), asyncio.get_running_loop().time()
        )
        share = math.ceil(peak / len(self.engines))
        return max(1, min(self.max_batch_size, share))

    async def score(self, item: Any) -> Scored:
        """Queue one item and wait for its result."""
        return await self.submit(item)

    async def _gather_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            engine = await self.engines.acquire()  # images arriving meanwhile join the batch
            try:
                await self._fill(batch)
            except BaseException:
                self.engines.release(engine)
                raise
            self.metrics.queue_depth.set(self._queue.qsize())
            batch = [waiting for waiting in batch if not waiting.future.done()]
            if not batch:
                self.engines.release(engine)
                continue
            running = asyncio.get_running_loop().create_task(self._run(batch, engine))
            self._running.add(running)
            running.add_done_callback(self._running.discard)

    async def _fill(self, batch: list[_Waiting]) -> None:
        """Add queued images until full (`batch_limit`); wait (bounded) only while more are
        announced or another engine is busy."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_wait_s
        limit = self.batch_limit()
        while len(batch) < limit:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = until - loop.time()
            # Waiting costs nothing while another engine is busy (the cores have work) and
            # makes the batch larger, which is cheaper per image; alone, only for images known
            # to be on their way.
            if left <= 0 or (self._expected <= 0 and self.engines.busy <= 1):
                return
            assert self._arrived is not None
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def _run(self, batch: list[_Waiting], engine: int) -> None:
        items = [waiting.item for waiting in batch]
        start = time.perf_counter()
        try:
            results = await self.engines.run(engine, self.run_batch, engine, items)
        except Exception as error:  # the engine failed: these requests fail, the service stays
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        finally:
            self.engines.release(engine)
        seconds = time.perf_counter() - start
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_seconds.observe(seconds)
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(Scored(result, len(batch)))
