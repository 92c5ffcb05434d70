"""Every option of the HTTP service in one frozen object: the command line fills it, the app,
the batcher and the limits read it, the tests and the benchmark build it directly."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Batches of up to 32 images: where eager torch's cost per image flattens for mobilenet_v3_small
# (about 0.5 ms per image at 32 against 6 ms for one, 2 cores); with several inference
# processes a batch takes at most its share of the images in flight (MicroBatcher.batch_limit)
# so that none sits idle. A wait of at most 2 ms, and only while images of other requests are
# still being received or another inference process is busy (MicroBatcher), so a lone client
# waits for nothing; 0, 2 and 5 ms measured alike in throughput, 2 and 5 with less CPU
# (docs/serve.md).
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


def default_inference_processes() -> int:
    """Inference processes: two where there are two cores or more, so one batch is decoded
    and run while the next is being gathered (on 2 cores at 32 clients: 661-697 requests/s
    against 562-581 with one; three or four were no faster; docs/serve.md)."""
    return min(2, os.cpu_count() or 1)


def default_engine_threads(processes: int) -> int:
    """Each inference process's torch threads: the cores but one (the event loop's: HTTP,
    parsing, answers) shared out among `processes`, at least one."""
    return max(1, ((os.cpu_count() or 1) - 1) // processes)


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
    inference_processes: int = 0  # 0: default_inference_processes()
    engine_threads: int = 0  # 0: default_engine_threads(processes)
    allow_urls: bool = False
    allow_private_urls: bool = False
    url_timeout_s: float = DEFAULT_URL_TIMEOUT_S
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    log_json: bool = False
    loop: str = "auto"  # uvicorn's event loop: auto (uvloop if installed), uvloop, asyncio
    http: str = "auto"  # uvicorn's HTTP parser: auto (httptools if installed), httptools, h11

    @property
    def processes_for_inference(self) -> int:
        """How many inference processes run batches side by side."""
        return self.inference_processes or default_inference_processes()

    @property
    def threads_for_engine(self) -> int:
        """torch's intra-op threads in each inference process."""
        return self.engine_threads or default_engine_threads(self.processes_for_inference)
