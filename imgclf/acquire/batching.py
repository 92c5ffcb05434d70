"""Hand validation work to the worker processes in batches, from asyncio.

A `ProcessPoolExecutor` round trip (pickle, pipe write, a wakeup of its manager thread, result
future) costs about as much main-process CPU as fetching a small image, and that CPU competes
with the event loop for the GIL. Jobs submitted during one event-loop iteration therefore go out
together as one batch (at most `max_batch`): under load the batches grow by themselves, when idle
a job leaves at once.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from imgclf.acquire.validator import ValidationOptions, Verdict, validate_batch

Item = tuple[bytes, str, str, ValidationOptions]


class BatchedValidator:
    """`await validate(data, directory, key, options)` runs `validate_and_stage` in a worker."""

    def __init__(self, pool: Executor, max_batch: int = 32) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._items: list[Item] = []
        self._futures: list[asyncio.Future[Verdict]] = []

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
        batch = asyncio.wrap_future(self.pool.submit(validate_batch, items))
        batch.add_done_callback(lambda done: _deliver(done, futures))


def _deliver(batch: asyncio.Future[list[Verdict]], futures: list[asyncio.Future[Verdict]]) -> None:
    error = None if batch.cancelled() else batch.exception()
    for index, future in enumerate(futures):
        if future.done():  # its row was dropped meanwhile (Ctrl-C)
            continue
        if batch.cancelled():
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(batch.result()[index])
