"""MicroBatcher on a real event loop with a plain numpy "engine" (row sums, so every answer is
checked by hand), and the service's URL fetcher against a loopback image server."""

from __future__ import annotations

import asyncio

import pytest
import torch

from imgclf.serve.batcher import EngineSlots, MicroBatcher, RecentPeak
from imgclf.serve.service_metrics import ServiceMetrics
from imgclf.serve.settings import ServiceSettings
from imgclf.serve.url_inputs import fetch_all, url_fetcher
from tests.serve.service_fixtures import jpeg_bytes
from tests.support.loopback import LoopbackServer, respond


class RecordingEngine:
    """Returns each image's pixel sum as its result; remembers batch sizes and engines."""

    def __init__(self, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.engines: list[int] = []
        self.fail = fail

    def __call__(self, engine: int, items: list[torch.Tensor]) -> list[float]:
        self.sizes.append(len(items))
        self.engines.append(engine)
        if self.fail:
            raise RuntimeError("engine broke")
        return [float(item.sum()) for item in items]


def image(value: float) -> torch.Tensor:
    return torch.full((3, 2, 2), value)


async def _run(engine, coroutine_factory, *, max_batch_size=4, max_wait_ms=60_000.0, engines=1):
    batcher = MicroBatcher(
        engine,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        metrics=ServiceMetrics(),
        engines=EngineSlots(engines),
    )
    batcher.start()
    try:
        return await asyncio.wait_for(coroutine_factory(batcher), 30)
    finally:
        await batcher.stop()


def test_concurrent_images_are_gathered_into_full_batches():
    engine = RecordingEngine()

    async def ten_images(batcher):
        return await asyncio.gather(*(batcher.score(image(v)) for v in range(10)))

    scored = asyncio.run(_run(engine, ten_images))
    # 12 pixels of value v each: the sum is 12 v, answered to the image that sent it.
    assert [float(s.result) for s in scored] == [12.0 * v for v in range(10)]
    assert engine.sizes == [4, 4, 2]
    assert [s.batch_size for s in scored] == [4] * 8 + [2] * 2


def test_with_two_engines_batches_overlap_each_taking_its_share():
    """Four images at once on two engines: two each (not four on one and nothing on the
    other), and engine 0 is held up until engine 1 has answered: only overlapping batches
    get there."""
    import threading

    second_done = threading.Event()
    engine = RecordingEngine()

    def run(number, items):
        if number == 0:
            assert second_done.wait(20), "the second batch never ran beside the first"
        result = engine(number, items)
        if number == 1:
            second_done.set()
        return result

    async def four_images(batcher):
        return await asyncio.gather(*(batcher.score(image(v)) for v in range(4)))

    scored = asyncio.run(_run(run, four_images, max_batch_size=32, max_wait_ms=0, engines=2))
    assert [s.result for s in scored] == [12.0 * v for v in range(4)]
    assert list(zip(engine.engines, engine.sizes, strict=True)) == [(1, 2), (0, 2)]


def test_while_another_engine_is_busy_a_batch_waits_to_grow_to_its_share():
    """Four images in flight on two engines make a share of two. Engine 0 holds its two;
    once engine 1 has answered its two, the next image waits (max_wait) on engine 1 for a
    companion instead of going alone."""
    import threading

    release = threading.Event()
    engine = RecordingEngine()

    def run(number, items):
        if number == 0:
            assert release.wait(20)
        return engine(number, items)

    async def busy_then_two(batcher):
        first = [batcher.submit(image(v)) for v in (1.0, 2.0, 3.0, 4.0)]
        await asyncio.gather(*first[2:])  # engine 1's batch; engine 0's is held
        fifth = batcher.submit(image(5.0))
        await asyncio.sleep(0.1)  # engine 1 is waiting for more: without the wait, a batch of 1
        sixth = batcher.submit(image(6.0))
        done = await asyncio.gather(fifth, sixth)
        release.set()
        return [*await asyncio.gather(*first), *done]

    scored = asyncio.run(_run(run, busy_then_two, max_batch_size=32, max_wait_ms=1_000, engines=2))
    assert [s.result for s in scored] == [12.0 * v for v in range(1, 7)]
    assert list(zip(engine.engines, engine.sizes, strict=True)) == [(1, 2), (1, 2), (0, 2)]


def test_an_announced_image_counts_once_in_the_share():
    """Four requests, each announced while it is received, then queued: four images in
    flight on two engines, two per batch (counted twice, the share would be three)."""
    engine = RecordingEngine()

    async def four_requests(batcher):
        queued = []
        for value in range(4):
            with batcher.expect(1) as arriving:
                queued.append(batcher.submit(image(value)))
                arriving.settle()
        return await asyncio.gather(*queued)

    scored = asyncio.run(_run(engine, four_requests, max_batch_size=32, max_wait_ms=0, engines=2))
    assert [s.result for s in scored] == [12.0 * v for v in range(4)]
    assert sorted(engine.sizes) == [2, 2]


def test_the_share_follows_the_images_in_flight_of_the_last_window():
    peak = RecentPeak(window_s=1.0)
    assert peak.see(32, now=0.0) == 32
    assert peak.see(3, now=0.5) == 32  # the same window
    assert peak.see(3, now=1.2) == 32  # the previous window still counts
    assert peak.see(3, now=2.3) == 3  # both windows since the peak have passed
    assert peak.see(8, now=9.0) == 8  # after a quiet spell, nothing older counts


def test_a_lone_image_does_not_wait_when_nothing_else_is_announced():
    """max_wait is a minute: an answer within the 30 s test bound means no wait happened."""
    engine = RecordingEngine()

    async def one(batcher):
        return await batcher.score(image(1.0))

    assert float(asyncio.run(_run(engine, one)).result) == 12.0
    assert engine.sizes == [1]


def test_announced_images_join_the_batch_they_were_expected_in():
    engine = RecordingEngine()

    async def late_joiner(batcher):
        with batcher.expect(2) as expected:

            async def arrive(value: float, delay: float):
                await asyncio.sleep(delay)
                expected.settle()
                return await batcher.score(image(value))

            return await asyncio.gather(arrive(1.0, 0), arrive(2.0, 0.05))

    asyncio.run(_run(engine, late_joiner))
    assert engine.sizes == [2]


def test_images_of_a_request_that_gave_up_are_never_scored():
    engine = RecordingEngine()

    async def cancelled_then_one(batcher):
        with batcher.expect(1):  # the batcher waits (a minute) for an image that is coming
            first = asyncio.ensure_future(batcher.score(image(1.0)))
            await asyncio.sleep(0)
            first.cancel()
        return await batcher.score(image(2.0))

    scored = asyncio.run(_run(engine, cancelled_then_one))
    assert float(scored.result) == 24.0
    assert engine.sizes == [1]


def test_an_engine_failure_fails_that_batch_only():
    engine = RecordingEngine(fail=True)

    async def one(batcher):
        with pytest.raises(RuntimeError, match="engine broke"):
            await batcher.score(image(1.0))
        engine.fail = False
        return await batcher.score(image(1.0))

    assert float(asyncio.run(_run(engine, one)).result) == 12.0


def test_url_inputs_use_the_downloaders_fetcher_with_private_addresses_blocked():
    photo = jpeg_bytes((40, 40))
    with LoopbackServer({"/cat.jpg": respond(photo), "/gone.jpg": respond(status=404)}) as server:
        urls = [server.url("/cat.jpg"), server.url("/gone.jpg"), "ftp://example.org/a.jpg"]

        async def fetch(settings):
            async with url_fetcher(settings) as fetcher:
                return await fetch_all(fetcher, urls)

        blocked = asyncio.run(fetch(ServiceSettings(allow_urls=True)))
        allowed = asyncio.run(fetch(ServiceSettings(allow_urls=True, allow_private_urls=True)))
    assert [result.reason for result in blocked] == [
        "blocked_private",
        "blocked_private",
        "unsupported_scheme",
    ]
    assert allowed[0].body == photo and allowed[0].reason == ""
    assert [result.reason for result in allowed[1:]] == ["http_404", "unsupported_scheme"]
