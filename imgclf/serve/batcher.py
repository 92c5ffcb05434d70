"""Micro-batching: images of concurrent requests gathered into one engine call.

Requests put their decoded, preprocessed images on an asyncio queue; one task takes the first
waiting image, gathers more until the batch is full or `max_wait_ms` have passed, and runs the
engine on the stack in a thread of its own, so the event loop keeps accepting and decoding
meanwhile. Images that arrive during an engine call form the next batch at once.

The batcher only waits while more images are on their way (announced with `expect` by a request
that is still decoding): a lone client's image goes to the engine at once instead of sitting out
the maximum wait, while under load the wait lets requests in mid-decode join the batch.

An image whose request gave up (deadline, disconnect) is dropped before the engine sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from imgclf.serve.service_metrics import ServiceMetrics


@dataclass
class _Waiting:
    tensor: torch.Tensor
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


@dataclass(frozen=True)
class Scored:
    """One image's class probabilities and its share of its batch's engine time."""

    probabilities: np.ndarray
    model_ms: float
    batch_size: int


class MicroBatcher:
    """`await score(tensor)` → Scored; batches of at most `max_batch_size` images.

    `run_batch` maps a stacked batch (B, 3, H, W) to one row per image: class probabilities
    for /predict, logits and unit embedding side by side for /search."""

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], np.ndarray],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        metrics: ServiceMetrics,
        engine: ThreadPoolExecutor | None = None,
        engine_threads: int | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1e3
        self.metrics = metrics
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._expected = 0
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # One engine thread: engine calls never overlap (each already uses its cores). torch's
        # thread count is per thread: the engine gets `engine_threads` (default: the
        # process's), the loop and the decoders one each. A second batcher (the search's
        # embeddings) shares the first one's `engine` thread.
        self.engine = engine or ThreadPoolExecutor(
            1,
            thread_name_prefix="imgclf-engine",
            initializer=torch.set_num_threads,
            initargs=(engine_threads or torch.get_num_threads(),),
        )

    def start(self) -> None:
        """Start the gathering task on the running loop."""
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._gather_forever())

    async def stop(self) -> None:
        """Stop gathering (after the requests are drained) and the engine thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.engine.shutdown(wait=True)

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

    def run_in_engine(self, function: Callable, *args) -> asyncio.Future:
        """Run `function(*args)` on the engine thread (warm-up calls)."""
        return asyncio.get_running_loop().run_in_executor(self.engine, function, *args)

    async def score(self, tensor: torch.Tensor) -> Scored:
        """Queue one preprocessed image (3, H, W) and wait for its probabilities."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Waiting(tensor, future))
        self.metrics.queue_depth.set(self._queue.qsize())
        self._wake()
        return await future

    async def _gather_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._fill(batch)
            self.metrics.queue_depth.set(self._queue.qsize())
            batch = [waiting for waiting in batch if not waiting.future.done()]
            if batch:
                await self._run(batch)

    async def _fill(self, batch: list[_Waiting]) -> None:
        """Add queued images until full; wait (bounded) only while more are announced."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = until - loop.time()
            if self._expected <= 0 or left <= 0:
                return
            assert self._arrived is not None
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def _run(self, batch: list[_Waiting]) -> None:
        stacked = torch.stack([waiting.tensor for waiting in batch])
        start = time.perf_counter()
        try:
            probabilities = await asyncio.get_running_loop().run_in_executor(
                self.engine, self.run_batch, stacked
            )
        except Exception as error:  # the engine failed: these requests fail, the service stays
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        seconds = time.perf_counter() - start
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_seconds.observe(seconds)
        share_ms = seconds * 1e3 / len(batch)
        for waiting, row in zip(batch, probabilities, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(Scored(row, share_ms, len(batch)))
