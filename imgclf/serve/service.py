"""The service's work, apart from HTTP: images in → the `--predict --json` payload out.

Per request: each image's bytes are queued for the micro-batcher at once; each batch goes to
the inference process (imgclf.serve.inference_process), which checks, decodes and preprocesses
the images and runs the engine; the answers are assembled by `--predict`'s own payload code
(imgclf.predict.prediction), so the classes and probabilities are those of
`utils/inference.py --predict --json` for the same image and weights.
A refused image is a result with its reason; it never fails the other images of the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.model.predictor import Predictor
from imgclf.model.spec import file_sha256
from imgclf.predict.batches import Outcome
from imgclf.predict.prediction import _payload
from imgclf.search.querying import answer_queries
from imgclf.search.store import Gallery
from imgclf.serve.batcher import EngineSlots, Expected, MicroBatcher
from imgclf.serve.inference_process import (
    EMBEDDINGS,
    PROBABILITIES,
    EngineSpec,
    InferenceProcess,
    ItemResult,
)
from imgclf.serve.lifecycle import ServiceState
from imgclf.serve.service_metrics import ServiceMetrics
from imgclf.serve.settings import ServiceSettings
from imgclf.serve.uploads import describe, error_status
from imgclf.serve.url_inputs import Fetched, fetch_all, url_fetcher

logger = logging.getLogger("imgclf.serve")
# Allocations (net of frees) before the collector's youngest pass; Python's default is 700.
GC_YOUNG_THRESHOLD = 50_000
# Seconds between attempts to start an inference process whose replacement failed to start.
RESTART_RETRY_S = 5.0


@dataclass(frozen=True)
class ImageInput:
    """One image of a request: its name (file name or URL) and bytes, or why there are none."""

    name: str
    data: bytes | None
    reason: str = ""
    read_ms: float = 0.0


@dataclass(frozen=True)
class ImageOutcome:
    """One image after the work: its probabilities and timings, or the reason it failed."""

    reason: str
    probabilities: np.ndarray | None = None
    preprocess_ms: float = 0.0
    model_ms: float = 0.0


@dataclass(frozen=True)
class Answer:
    """A /predict answer: the HTTP status and the JSON payload."""

    status: int
    payload: dict[str, Any]


def weights_sha256(settings: ServiceSettings, predictor: Predictor) -> str:
    """The sha256 of the weights file served (an export records its weights file's)."""
    return predictor.spec.source_sha256 or file_sha256(settings.weights)


class Service:
    """The micro-batchers, the inference process behind them and the URL fetcher."""

    def __init__(
        self, settings: ServiceSettings, predictor: Predictor, gallery: Gallery | None = None
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.gallery = gallery
        self.weights_sha256 = weights_sha256(settings, predictor)
        self.state = ServiceState()
        self.metrics = ServiceMetrics()
        spec = EngineSpec(settings, embeddings=gallery is not None)
        self.inference = [
            InferenceProcess(spec, on_restart=self._restarted)
            for _ in range(settings.processes_for_inference)
        ]
        self.engines = EngineSlots(len(self.inference))
        self.batcher = MicroBatcher(
            self._in_process(PROBABILITIES),
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            metrics=self.metrics,
            engines=self.engines,
        )
        # /search's embeddings: batched apart from /predict's probabilities (another engine
        # call), on the same engines and inference processes.
        self.embed_batcher = (
            MicroBatcher(
                self._in_process(EMBEDDINGS),
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                metrics=self.metrics,
                engines=self.engines,
            )
            if gallery is not None
            else None
        )
        # FAISS searches, off the event loop (an approximate index of millions takes a while).
        self._searches = (
            ThreadPoolExecutor(1, thread_name_prefix="imgclf-search")
            if gallery is not None
            else None
        )
        self._fetcher = url_fetcher(settings) if settings.allow_urls else None
        self._warm_up_task: asyncio.Task | None = None
        self._stopping = threading.Event()  # ends the retries of a failed restart
        self._retrying: set[int] = set()  # engines whose process is being started again

    async def start(self) -> None:
        """Start batching and fetching, and the inference process in the background (ready
        once it has loaded the model and warmed up)."""
        self.batcher.start()
        if self.embed_batcher is not None:
            self.embed_batcher.start()
        if self._fetcher is not None:
            await self._fetcher.__aenter__()
        self._warm_up_task = asyncio.get_running_loop().create_task(self._warm_up())

    async def stop(self) -> None:
        """Stop everything started by `start` (after the requests were drained)."""
        if self._warm_up_task is not None and not self._warm_up_task.done():
            self._warm_up_task.cancel()
        self._stopping.set()
        if self.embed_batcher is not None:
            await self.embed_batcher.stop()
        await self.batcher.stop()
        await asyncio.gather(*(asyncio.to_thread(child.stop) for child in self.inference))
        if self._searches is not None:
            self._searches.shutdown(wait=True)
        if self._fetcher is not None:
            await self._fetcher.__aexit__(None, None, None)

    async def _warm_up(self) -> None:
        try:
            # Each child loads the model and runs every batch size up to --max-batch-size.
            begin = time.perf_counter()
            await asyncio.gather(
                *(self.engines.run(n, child.start) for n, child in enumerate(self.inference))
            )
            seconds = time.perf_counter() - begin
        except Exception as error:
            logger.error(f"not ready: {error}")
            return
        # What is loaded by now (torch, the model, FastAPI) lives as long as the process: frozen
        # out of the collector's sight, a full collection no longer walks it (each took 315-361
        # ms under load, the cause of the p99: docs/serve.md). A request's objects are freed by
        # their reference counts, so young collections found little: a rarer first one saves
        # the loop about 50 us per request (none ran in 7,500 requests at 50,000).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD)
        self.state.warm_up_seconds = seconds
        self.state.warmed_up = True
        logger.info(
            f"ready: {self.predictor.spec.arch} on {self.predictor.backend} in "
            f"{len(self.inference)} inference process(es) of {self.settings.threads_for_engine} "
            f"torch thread(s), warmed up batch sizes 1-{self.settings.max_batch_size} in "
            f"{seconds:.1f} s"
        )

    def _in_process(self, kind: str):
        """run_batch for a MicroBatcher: `kind` rows of a batch in engine n's process."""

        def run(engine: int, items: list[bytes]) -> list[ItemResult]:
            child = self.inference[engine]
            try:
                return child.run(kind, items)
            finally:
                if not child.running and not self._stopping.is_set():
                    self._lost(engine)

        return run

    def _lost(self, engine: int) -> None:
        """Inference process `engine` died and its replacement did not start (on its engine
        thread): not ready until a later attempt (queued behind this batch on the same
        thread, so nothing else runs there meanwhile) starts one."""
        if engine in self._retrying:  # a batch queued before the first failure
            return
        self._retrying.add(engine)
        failure = self.inference[engine].failure
        self.state.unavailable = (
            f"an inference process died and could not be replaced ({failure}); the service "
            f"tries again every {RESTART_RETRY_S:g} s, see its log"
        )
        logger.error(f"not ready: {self.state.unavailable}")
        self.engines.executors[engine].submit(self._restart_until_started, engine)

    def _restart_until_started(self, engine: int) -> None:
        child = self.inference[engine]
        while not child.running:
            if self._stopping.wait(RESTART_RETRY_S):
                return
            try:
                child.start()
            except RuntimeError as error:
                logger.error(f"the inference process still does not start: {error}")
        self._retrying.discard(engine)
        if all(other.running for other in self.inference):
            self.state.unavailable = ""
            logger.info("ready: a fresh inference process is serving")

    def _restarted(self, reason: str) -> None:
        """The inference process died and a fresh one took its place (on the engine thread)."""
        self.metrics.inference_restarts.labels(reason).inc()
        logger.warning(f"the inference process died ({reason}); a fresh one is serving")

    def receiving(self, search: bool = False) -> contextlib.AbstractContextManager[Expected]:
        """Announce a request whose images are still being received (body, URLs), so that a
        batch waits for them (at most --max-wait-ms); pass the result to predict / search."""
        batcher = self.embed_batcher if search and self.embed_batcher else self.batcher
        return batcher.expect(1)

    @property
    def urls_allowed(self) -> bool:
        """True when started with --allow-urls."""
        return self._fetcher is not None

    async def fetch(self, urls: list[str]) -> list[ImageInput]:
        """The images behind `urls` (only with --allow-urls)."""
        assert self._fetcher is not None, "URL inputs are off"
        fetched: list[Fetched] = await fetch_all(self._fetcher, urls)
        return [
            ImageInput(url, result.body, result.reason, result.read_ms)
            for url, result in zip(urls, fetched, strict=True)
        ]

    async def _through(
        self, batcher: MicroBatcher, images: list[ImageInput], arriving: Expected | None
    ) -> list[ImageOutcome]:
        """Score every image through `batcher`, in order (all queued at once, then `arriving`,
        the request's announcement, is settled); an image that cannot be read or decoded is an
        outcome with its reason, not an error."""
        self.metrics.images.inc(len(images))
        queued = [
            batcher.submit(image.data) if image.data is not None else None for image in images
        ]
        if arriving is not None:
            arriving.settle()
        try:
            outcomes = []
            for image, future in zip(images, queued, strict=True):
                if future is None:
                    outcomes.append(ImageOutcome(image.reason))
                    continue
                result: ItemResult = (await future).result
                if result.reason:
                    outcomes.append(ImageOutcome(result.reason))
                else:
                    outcomes.append(
                        ImageOutcome("", result.row, result.preprocess_ms, result.model_ms)
                    )
            return outcomes
        finally:  # the request gave up (deadline, disconnect): its images are dropped unscored
            for future in queued:
                if future is not None:
                    future.cancel()

    async def predict(
        self, images: list[ImageInput], topk: int, arriving: Expected | None = None
    ) -> Answer:
        """Classify every image; 200 unless none of them could be classified. `arriving`: the
        request's announcement (see `receiving`), settled once its images are queued."""
        start = time.perf_counter()
        done = await self._through(self.batcher, images, arriving)
        return self._answer(images, done, topk, time.perf_counter() - start)

    async def search(
        self, images: list[ImageInput], k: int, arriving: Expected | None = None
    ) -> Answer:
        """The k nearest gallery items and the nearest prototype of every image (--index);
        200 unless none of them could be embedded."""
        assert self.gallery is not None and self.embed_batcher is not None, "no --index"
        done = await self._through(self.embed_batcher, images, arriving)
        ok = [n for n, image in enumerate(done) if not image.reason]
        rows = np.stack([done[n].probabilities for n in ok]) if ok else np.zeros((0, 0))
        classes = len(self.predictor.classes)
        answered = await asyncio.get_running_loop().run_in_executor(
            self._searches,
            answer_queries,
            self.gallery,
            rows[:, classes:],
            rows[:, :classes],
            self.predictor.classes,
            k,
        )
        answers = dict(zip(ok, answered, strict=True))
        results = []
        for n, (image, outcome) in enumerate(zip(images, done, strict=True)):
            if outcome.reason:
                self.metrics.images_failed.labels(outcome.reason).inc()
                error = {"error": describe(outcome.reason), "reason": outcome.reason}
                results.append({"input": image.name, **error})
            else:
                results.append({"input": image.name, **answers[n]})
        failed = len(images) - len(ok)
        payload = {
            "arch": self.predictor.spec.arch,
            "weights_sha256": self.weights_sha256,
            "index": self.settings.index,
            "gallery_items": len(self.gallery.items),
            "k": k,
            "failed": failed,
            "results": results,
        }
        reasons = [outcome.reason for outcome in done if outcome.reason]
        status = 200 if failed < len(images) else error_status(reasons)
        return Answer(status, payload)

    def _answer(
        self, images: list[ImageInput], done: list[ImageOutcome], topk: int, seconds: float
    ) -> Answer:
        classes = len(self.predictor.classes)
        count = len(images)
        probabilities = np.full((count, classes), np.nan)
        errors: dict[int, str] = {}
        reasons: dict[int, str] = {}
        preprocess_ms, model_ms = np.zeros(count), np.zeros(count)
        for index, image in enumerate(done):
            if image.reason:
                reasons[index] = image.reason
                errors[index] = describe(image.reason)
                self.metrics.images_failed.labels(image.reason).inc()
                continue
            probabilities[index] = image.probabilities
            preprocess_ms[index] = image.preprocess_ms
            model_ms[index] = image.model_ms
        read_ms = np.array([image.read_ms for image in images], dtype=float)
        outcome = Outcome(
            probabilities,
            errors,
            read_ms,
            preprocess_ms,
            model_ms,
            self.settings.max_batch_size,
            seconds,
        )
        topk = max(1, min(topk, classes))
        payload = {"arch": self.predictor.spec.arch, "weights_sha256": self.weights_sha256}
        payload |= _payload(self.predictor, [image.name for image in images], outcome, topk)
        for index, reason in reasons.items():
            payload["results"][index]["reason"] = reason
        status = 200 if len(reasons) < count else error_status(list(reasons.values()))
        return Answer(status, payload)
