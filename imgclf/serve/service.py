"""The service's work, apart from HTTP: images in → the `--predict --json` payload out.

Per request: each image is checked, decoded and preprocessed in the decoding threads (or, with
--inline-max-pixels, a small JPEG on the event loop itself) and, as soon as it is ready, queued
for the micro-batcher; the answers are assembled by `--predict`'s own
payload code (imgclf.predict.prediction), so the classes and probabilities are those of
`utils/inference.py --predict --json` for the same image and weights.
A refused image is a result with its reason; it never fails the other images of the request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from imgclf.model.predictor import Predictor
from imgclf.model.spec import file_sha256
from imgclf.predict.batches import Outcome, _warm_up_jpeg
from imgclf.predict.prediction import _payload
from imgclf.search.index import as_unit_float32
from imgclf.search.querying import answer_queries
from imgclf.search.store import Gallery
from imgclf.serve.batcher import MicroBatcher
from imgclf.serve.lifecycle import ServiceState
from imgclf.serve.service_metrics import ServiceMetrics
from imgclf.serve.settings import ServiceSettings
from imgclf.serve.uploads import describe, error_status, prepare_image, prepared_inline
from imgclf.serve.url_inputs import Fetched, fetch_all, url_fetcher

logger = logging.getLogger("imgclf.serve")
# Untimed engine calls per batch size at start-up: eager torch builds its kernels for a new
# input shape during its first two calls (Predictor.warm_up).
WARM_UP_CALLS = 2
# Allocations (net of frees) before the collector's youngest pass; Python's default is 700.
GC_YOUNG_THRESHOLD = 50_000


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


def _blank_batch(predictor: Predictor) -> torch.Tensor:
    size = predictor.spec.preprocessing.img_size
    return torch.zeros(1, 3, size, size)


class Service:
    """The loaded model, the micro-batcher, the decoding threads and the URL fetcher."""

    def __init__(
        self, settings: ServiceSettings, predictor: Predictor, gallery: Gallery | None = None
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.gallery = gallery
        self.weights_sha256 = weights_sha256(settings, predictor)
        self.state = ServiceState()
        self.metrics = ServiceMetrics()
        self.batcher = MicroBatcher(
            predictor.probabilities,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            metrics=self.metrics,
            engine_threads=settings.threads_for_engine,
        )
        # /search's embeddings: batched apart from /predict's probabilities (another engine
        # call), on the same engine thread.
        self.embed_batcher = (
            MicroBatcher(
                self._embed_rows,
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                metrics=self.metrics,
                engine=self.batcher.engine,
            )
            if gallery is not None
            else None
        )
        # One torch thread per decoder: one small image is not worth splitting
        # (see imgclf.model.single_image.one_torch_thread).
        self._decoders = ThreadPoolExecutor(
            settings.threads_for_decoding,
            thread_name_prefix="imgclf-decode",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
        self._fetcher = url_fetcher(settings) if settings.allow_urls else None
        self._warm_up_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start batching and fetching, and warm up in the background (ready afterwards)."""
        # With --inline-max-pixels small images are prepared on the loop's thread: one torch
        # thread there, as in the decoding threads, so the engine keeps its cores.
        torch.set_num_threads(1)
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
        if self.embed_batcher is not None:
            await self.embed_batcher.stop()
        await self.batcher.stop()
        self._decoders.shutdown(wait=True)
        if self._fetcher is not None:
            await self._fetcher.__aexit__(None, None, None)

    async def _warm_up(self) -> None:
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        jpeg = _warm_up_jpeg()
        decodes = [
            loop.run_in_executor(self._decoders, prepare_image, self.predictor, jpeg)
            for _ in range(3 * self.settings.threads_for_decoding)
        ]
        await asyncio.gather(*decodes)
        for size in range(1, self.settings.max_batch_size + 1):
            await self.batcher.run_in_engine(self.predictor.warm_up, size, WARM_UP_CALLS)
        if self.embed_batcher is not None:
            await self.batcher.run_in_engine(self._embed_rows, _blank_batch(self.predictor))
        # What is loaded by now (torch, the model, FastAPI) lives as long as the process: frozen
        # out of the collector's sight, a full collection no longer walks it (each took 315-361
        # ms under load, the cause of the p99: docs/serve.md). A request's objects are freed by
        # their reference counts, so young collections found little: a rarer first one saves
        # the loop about 50 us per request (none ran in 7,500 requests at 50,000).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD)
        self.state.warm_up_seconds = time.perf_counter() - start
        self.state.warmed_up = True
        logger.info(
            f"ready: {self.predictor.spec.arch} on {self.predictor.backend}, warmed up batch "
            f"sizes 1-{self.settings.max_batch_size} in {self.state.warm_up_seconds:.1f} s"
        )

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
        self, batcher: MicroBatcher, images: list[ImageInput]
    ) -> list[ImageOutcome]:
        """Decode every image (in the decoding threads; JPEGs up to --inline-max-pixels on the
        loop) and score it through `batcher`, in order; an image that cannot be read or decoded
        is an outcome with its reason, not an error."""
        self.metrics.images.inc(len(images))
        readable = sum(image.data is not None for image in images)
        with batcher.expect(readable) as expected:

            async def one(image: ImageInput) -> ImageOutcome:
                if image.data is None:
                    return ImageOutcome(image.reason)
                if prepared_inline(image.data, self.settings.inline_max_pixels):
                    prepared = prepare_image(self.predictor, image.data)
                else:
                    prepared = await asyncio.get_running_loop().run_in_executor(
                        self._decoders, prepare_image, self.predictor, image.data
                    )
                expected.settle()
                if prepared.tensor is None:
                    return ImageOutcome(prepared.reason)
                scored = await batcher.score(prepared.tensor)
                return ImageOutcome(
                    "", scored.probabilities, prepared.preprocess_ms, scored.model_ms
                )

            return list(await asyncio.gather(*(one(image) for image in images)))

    async def predict(self, images: list[ImageInput], topk: int) -> Answer:
        """Classify every image; 200 unless none of them could be classified."""
        start = time.perf_counter()
        done = await self._through(self.batcher, images)
        return self._answer(images, done, topk, time.perf_counter() - start)

    def _embed_rows(self, batch: torch.Tensor) -> np.ndarray:
        """Per image its logits (K) then its unit embedding (D), as `query` computes them."""
        logits, features = self.predictor.embed(batch)
        return np.concatenate(
            [np.asarray(logits, dtype=np.float32), as_unit_float32(features)], axis=1
        )

    async def search(self, images: list[ImageInput], k: int) -> Answer:
        """The k nearest gallery items and the nearest prototype of every image (--index);
        200 unless none of them could be embedded."""
        assert self.gallery is not None and self.embed_batcher is not None, "no --index"
        done = await self._through(self.embed_batcher, images)
        ok = [n for n, image in enumerate(done) if not image.reason]
        rows = np.stack([done[n].probabilities for n in ok]) if ok else np.zeros((0, 0))
        classes = len(self.predictor.classes)
        # FAISS search off the event loop: an approximate index of millions takes a while.
        answered = await asyncio.get_running_loop().run_in_executor(
            self._decoders,
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
