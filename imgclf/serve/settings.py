"""Every option of the HTTP service in one frozen object: the command line fills it, the app,
the batcher and the limits read it, the tests and the benchmark build it directly."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Batches of up to 32 images: where eager torch's cost per image flattens for mobilenet_v3_small
# (about 0.5 ms per image at 32 against 6 ms for one, 2 cores). A wait of at most 2 ms, below
# one request's decoding time, and only while images are still on their way (MicroBatcher), so
# a lone client waits for nothing. A sweep on a quiet machine is still to be done (docs/serve.md).
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE = 128
# Every image is decoded in the decoding threads (0): with uvloop + httptools, preparing the
# 100x100 demo photos on the event loop instead (--inline-max-pixels 65536) was no faster at 32
# clients on 2 cores (measured side by side: docs/serve.md), and the loop never stalls on an
# upload. A JPEG of at most N pixels is prepared on the loop with --inline-max-pixels N.
DEFAULT_INLINE_MAX_PIXELS = 0
# The downloader's default body cap (FetchOptions.max_bytes): the same idea of "too large".
DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGES = 32
DEFAULT_DEADLINE_MS = 10_000
DEFAULT_DRAIN_SECONDS = 30.0
DEFAULT_URL_TIMEOUT_S = 10.0
RETRY_AFTER_S = 1


def default_decode_threads() -> int:
    """Decoding threads: one per core, at most 4 (the same cap as --predict's loaders)."""
    return min(4, os.cpu_count() or 1)


def default_engine_threads() -> int:
    """The eager / TorchScript engine's torch threads: one core fewer than the machine has,
    so the event loop (HTTP, parsing, answers) keeps a core of its own (on 2 cores: 329
    against 237 requests/s at 32 clients, measured: docs/serve.md)."""
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass(frozen=True)
class ServiceSettings:
    """What `python utils/serve.py` was asked to do (see its --help for each field)."""

    weights: str = "weights/mobilenet_v3_small.pth"
    backend: str | None = None
    tta: bool | None = None  # None: as the weights file says (export.tta)
    index: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_images: int = DEFAULT_MAX_IMAGES
    deadline_ms: int = DEFAULT_DEADLINE_MS
    topk: int = 5
    decode_threads: int = 0  # 0: default_decode_threads()
    engine_threads: int = 0  # 0: default_engine_threads()
    inline_max_pixels: int = DEFAULT_INLINE_MAX_PIXELS
    allow_urls: bool = False
    allow_private_urls: bool = False
    url_timeout_s: float = DEFAULT_URL_TIMEOUT_S
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    log_json: bool = False
    loop: str = "auto"  # uvicorn's event loop: auto (uvloop if installed), uvloop, asyncio
    http: str = "auto"  # uvicorn's HTTP parser: auto (httptools if installed), httptools, h11

    @property
    def threads_for_decoding(self) -> int:
        """The decoding pool's size."""
        return self.decode_threads or default_decode_threads()

    @property
    def threads_for_engine(self) -> int:
        """torch's intra-op threads in the engine thread."""
        return self.engine_threads or default_engine_threads()
