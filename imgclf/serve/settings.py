"""Every option of the HTTP service in one frozen object: the command line fills it, the app,
the batcher and the limits read it, the tests and the benchmark build it directly."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Measured defaults (docs/serve.md, benchmarks/serve.py; 2 shared cores): batches of up to 32
# images reach the engine's per-image floor, and a wait of 2 ms gathers the requests already
# decoding without adding visible latency for a lone client (the batcher only waits while
# images are still on their way: see MicroBatcher).
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE = 128
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


@dataclass(frozen=True)
class ServiceSettings:
    """What `python utils/serve.py` was asked to do (see its --help for each field)."""

    weights: str = "weights/mobilenet_v3_small.pth"
    backend: str | None = None
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
    allow_urls: bool = False
    allow_private_urls: bool = False
    url_timeout_s: float = DEFAULT_URL_TIMEOUT_S
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    log_json: bool = False

    @property
    def threads_for_decoding(self) -> int:
        """The decoding pool's size."""
        return self.decode_threads or default_decode_threads()
