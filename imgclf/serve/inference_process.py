"""The model in a process of its own: batches of image bytes in, one row or refusal per image out.

In one process the event loop, the decoding threads and the engine thread shared one GIL, and
eager torch gives it up and takes it back around each of its ~150 operations per batch: under
load an engine call took 2.4 times its CPU time waiting for the loop, and the service stayed
near 400 requests/s on 2 cores with most of a core idle (docs/benchmarks.md, HTTP service). Here
a child process with an interpreter of its own checks and decodes the images, preprocesses the
batch and runs the engine, as `--predict`'s loader workers decode beside its model; the
service's process keeps HTTP and the micro-batching, and one pipe round trip per batch.

The child checks each image with the downloader's checks (the same reason words), decodes it
with `--predict`'s decoder and applies the model's eval preset to the whole batch
(`EvalPreset.batch`, as `--predict` does), so the answers are `--predict`'s. Each image is
decoded under the validator's per-image timer. When the child dies (a decoder crash, the timer
ending a decoder stuck on hostile bytes, the OOM killer), a fresh one is started and the batch
is sent again without the image it died on, which is recorded as `worker_crashed` or
`validate_timeout`: one hostile image never fails the others, and the service keeps answering.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from imgclf.acquire.batching import VALIDATE_TIMEOUT, WORKER_CRASHED
from imgclf.acquire.validator import ValidationOptions, init_worker, within_time_limit
from imgclf.model.predictor import Predictor, load_predictor
from imgclf.predict.batches import _warm_up_jpeg
from imgclf.search.index import as_unit_float32
from imgclf.serve.settings import ServiceSettings
from imgclf.serve.uploads import VALIDATION, decode_upload

# What a batch asks for: class probabilities (/predict), or per image its logits then its unit
# embedding side by side, as `utils/search.py query` computes them (/search).
PROBABILITIES = "probabilities"
EMBEDDINGS = "embeddings"
# Untimed engine calls per batch size at start-up: eager torch builds its kernels for a new
# input shape during its first two calls (Predictor.warm_up).
WARM_UP_CALLS = 2
# Seconds the child gets to load the model and warm up before the start counts as failed.
START_TIMEOUT_S = 600.0
_READY = "ready"


@dataclass(frozen=True)
class EngineSpec:
    """What the child needs: the service's settings (the model to load, --engine-threads,
    --max-batch-size, --deadline-ms as each image's time limit) and its decoder."""

    settings: ServiceSettings
    embeddings: bool = False  # warm up /search's engine call too
    # bytes → (pixels, "") or (None, reason); importable, as the child is spawned (the tests
    # pass one that crashes or hangs on a marker)
    decode: Callable[[bytes, ValidationOptions], tuple[torch.Tensor | None, str]] = decode_upload

    @property
    def validation(self) -> ValidationOptions:
        """The downloader's checks, with --deadline-ms as each image's time limit (its check
        and decoding; the child is ended past it)."""
        return dataclasses.replace(VALIDATION, timeout=self.settings.deadline_ms / 1e3)


@dataclass(frozen=True)
class ItemResult:
    """One image after the child: its row (probabilities, or logits then embedding) and
    timings, or the reason word it was refused with."""

    row: np.ndarray | None
    reason: str = ""
    preprocess_ms: float = 0.0
    model_ms: float = 0.0


@dataclass(frozen=True)
class _Reply:
    rows: np.ndarray  # one per image decoded, in order
    reasons: list[str]  # per image sent: "" (decoded) or its reason word
    preprocess_ms: list[float]
    model_ms: float  # each decoded image's share of the engine call


class _ChildDied(Exception):
    def __init__(self, item: int, reason: str) -> None:
        super().__init__(reason)
        self.item = item  # the image it died on (-1: not while decoding one)
        self.reason = reason


def embedding_rows(predictor: Predictor, batch: torch.Tensor) -> np.ndarray:
    """Per image its logits (K) then its unit embedding (D), as `query` computes them."""
    logits, features = predictor.embed(batch)
    return np.concatenate(
        [np.asarray(logits, dtype=np.float32), as_unit_float32(features)], axis=1
    )


def _rows(predictor: Predictor, kind: str, batch: torch.Tensor) -> np.ndarray:
    if kind == EMBEDDINGS:
        return embedding_rows(predictor, batch)
    return predictor.probabilities(batch)


def _run_batch(
    predictor: Predictor,
    kind: str,
    items: list[bytes],
    spec: EngineSpec,
    current,
) -> _Reply:
    options = spec.validation
    pixels: list[torch.Tensor] = []
    reasons: list[str] = []
    preprocess_ms: list[float] = []
    for index, data in enumerate(items):
        current.value = index  # read by the parent if this image kills the process
        start = time.perf_counter()
        image, reason = within_time_limit(options.timeout, spec.decode, data, options)
        current.value = -1
        reasons.append(reason)
        preprocess_ms.append((time.perf_counter() - start) * 1e3)
        if image is not None:
            pixels.append(image)
    if not pixels:
        return _Reply(np.zeros((0, 0)), reasons, preprocess_ms, 0.0)
    start = time.perf_counter()
    batch = predictor.preset.batch(pixels)
    share = (time.perf_counter() - start) * 1e3 / len(pixels)
    preprocess_ms = [
        ms if reason else ms + share for ms, reason in zip(preprocess_ms, reasons, strict=True)
    ]
    start = time.perf_counter()
    rows = _rows(predictor, kind, batch)
    model_ms = (time.perf_counter() - start) * 1e3 / len(pixels)
    return _Reply(rows, reasons, preprocess_ms, model_ms)


def _warm_up(predictor: Predictor, spec: EngineSpec) -> None:
    for _ in range(3):
        image, _reason = decode_upload(_warm_up_jpeg())
        predictor.preset.batch([image])
    for size in range(1, spec.settings.max_batch_size + 1):
        predictor.warm_up(size, WARM_UP_CALLS)
    if spec.embeddings:
        size = predictor.spec.preprocessing.img_size
        embedding_rows(predictor, torch.zeros(1, 3, size, size))


def _child(connection, spec: EngineSpec, current) -> None:
    """The child's life: load, warm up, say ready, then answer batches until told to stop."""
    # Ctrl-C and SIGTERM are the parent's business (it drains, then stops this process); the
    # child ends with its parent, and an image over its time limit ends it (init_worker).
    init_worker()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = spec.settings
    torch.set_num_threads(settings.threads_for_engine)
    try:
        predictor = load_predictor(settings.weights, settings.backend, tta=settings.tta)
        _warm_up(predictor, spec)
    except Exception as error:
        connection.send(f"{type(error).__name__}: {error}")
        return
    connection.send(_READY)
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        kind, items = message
        try:
            reply: _Reply | str = _run_batch(predictor, kind, items, spec, current)
        except Exception as error:  # the engine failed: this batch fails, the child stays
            reply = f"{type(error).__name__}: {error}"
        connection.send(reply)


class InferenceProcess:
    """The child process and its pipe; `run` is called from one thread at a time (the
    batcher's engine thread). `on_restart(reason)` is called after each replacement."""

    def __init__(self, spec: EngineSpec, on_restart: Callable[[str], None] | None = None):
        self.spec = spec
        self.on_restart = on_restart
        self.restarts = 0
        # spawn: a fresh interpreter, not a fork of a process running threads and OpenMP.
        self._context = multiprocessing.get_context("spawn")
        self._current = self._context.Value("i", -1, lock=False)
        self._process = None
        self._connection = None
        self.failure = ""  # why the last start failed ("" once one succeeds)

    @property
    def pid(self) -> int | None:
        """The child's process id (None while none runs)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while a started child is there to take batches."""
        return self._process is not None

    def start(self) -> float:
        """Start the child and wait until it has loaded the model and warmed up; seconds.
        Raises RuntimeError (and keeps the reason in `failure`) when it cannot."""
        try:
            seconds = self._start()
        except RuntimeError as error:
            self.failure = str(error)
            raise
        self.failure = ""
        return seconds

    def _start(self) -> float:
        begin = time.perf_counter()
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_child,
            args=(child_end, self.spec, self._current),
            name="imgclf-inference",
            daemon=True,
        )
        process.start()
        child_end.close()  # so that the child's death reads as end-of-file here
        self._process, self._connection = process, parent_end
        if not parent_end.poll(START_TIMEOUT_S):
            self._kill()
            raise RuntimeError(f"the inference process did not start in {START_TIMEOUT_S:g} s")
        try:
            answer = parent_end.recv()
        except EOFError:
            self._kill()
            raise RuntimeError(
                f"the inference process died while starting (exit code {process.exitcode})"
            ) from None
        if answer != _READY:
            self._kill()
            raise RuntimeError(f"the inference process could not load the model: {answer}")
        return time.perf_counter() - begin

    def run(self, kind: str, items: list[bytes]) -> list[ItemResult]:
        """One result per image of `items` (PROBABILITIES or EMBEDDINGS rows); an image the
        child dies on is refused, the others are sent again to a fresh child."""
        if not self.running:
            raise RuntimeError(f"the inference process is not running ({self.failure})")
        results: dict[int, ItemResult] = {}
        pending = list(range(len(items)))
        while pending:
            try:
                reply = self._round_trip(kind, [items[n] for n in pending])
            except _ChildDied as died:
                self._replace(died.reason)
                if died.item < 0:  # not an image's decoding: the engine or the OOM killer
                    raise RuntimeError(f"the inference process died ({died.reason})") from None
                results[pending.pop(died.item)] = ItemResult(None, died.reason)
                continue
            if isinstance(reply, str):
                raise RuntimeError(f"the engine failed: {reply}")
            decoded = iter(range(len(reply.rows)))
            for n, reason, ms in zip(pending, reply.reasons, reply.preprocess_ms, strict=True):
                row = None if reason else reply.rows[next(decoded)]
                results[n] = ItemResult(row, reason, ms, 0.0 if reason else reply.model_ms)
            pending = []
        return [results[n] for n in range(len(items))]

    def _round_trip(self, kind: str, items: list[bytes]) -> _Reply | str:
        assert self._connection is not None
        try:
            self._connection.send((kind, items))
            return self._connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            item = self._current.value
            self._current.value = -1
            assert self._process is not None
            self._process.join(5)
            code = self._process.exitcode
            reason = VALIDATE_TIMEOUT if code == -signal.SIGALRM else WORKER_CRASHED
            raise _ChildDied(item, reason) from None

    def _replace(self, reason: str) -> None:
        self._kill()
        self.restarts += 1
        try:
            self.start()
        except RuntimeError as error:
            raise RuntimeError(
                f"the inference process died ({reason}) and a fresh one did not start: {error}"
            ) from None
        if self.on_restart is not None:
            self.on_restart(reason)

    def _kill(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(5)
            self._process = None

    def stop(self) -> None:
        """Ask the child to finish and wait for it (killed if it does not end in 10 s)."""
        if self._process is None:
            return
        try:
            assert self._connection is not None
            self._connection.send(None)
        except OSError:
            pass
        self._process.join(10)
        self._kill()
