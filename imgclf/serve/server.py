"""uvicorn running the app, with a graceful drain on SIGTERM (and Ctrl-C).

On the first signal the service turns unready (/health/ready and new work: 503, the connection
closed after the answer) while it keeps listening, so a load balancer sees it leave; once the
admitted requests are answered (at most --drain-seconds), uvicorn stops listening, closes the
idle connections and the process exits 0. A second signal stops at once.

uvicorn itself would re-raise the signal after its shutdown (so the process would die by
SIGTERM, not exit 0): this server does not record it.

The event loop is uvloop and the HTTP parser httptools (both pinned in requirements.txt) when
they can be imported, else asyncio's own loop and h11 (pure Python), with a log line saying so.
They make HTTP cheaper (a parse-only endpoint: 2,100-4,900 requests/s against 1,800-2,700 on
h11 the day before); for the service as a whole the gain is within the noise of a shared
machine (docs/serve.md).
"""

from __future__ import annotations

import importlib.util
import logging
import time

import uvicorn

from imgclf.serve.lifecycle import ServiceState

logger = logging.getLogger("imgclf.serve")
# Connections still open when the drain ends get this long before their tasks are cancelled.
CLOSE_GRACE_S = 2.0


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose exit signal starts a bounded drain instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, state: ServiceState, drain_seconds: float):
        super().__init__(config)
        self.state = state
        self.drain_seconds = drain_seconds
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self._drain_until is None:
            self._drain_until = time.monotonic() + self.drain_seconds
            self.state.draining = True
            logger.info(
                f"signal {sig}: draining {self.state.in_flight} request(s), "
                f"at most {self.drain_seconds:g} s"
            )
        elif self.should_exit:
            self.force_exit = True
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and not self.should_exit:
            drained = self.state.in_flight == 0
            if drained or time.monotonic() >= self._drain_until:
                if not drained:
                    logger.info(f"drain time over with {self.state.in_flight} request(s) left")
                self.should_exit = True
        return await super().on_tick(counter)


def loop_and_parser(loop: str = "auto", http: str = "auto") -> tuple[str, str]:
    """uvicorn's `loop` and `http` for "auto": uvloop and httptools where importable, else
    asyncio and h11 (named explicitly, so the log says what runs)."""
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def serve(
    app,
    *,
    host: str,
    port: int,
    state: ServiceState,
    drain_seconds: float,
    loop: str = "auto",
    http: str = "auto",
) -> None:
    """Run `app` until a signal ends the drain; returns normally (exit code 0)."""
    loop, http = loop_and_parser(loop, http)
    if (loop, http) != ("uvloop", "httptools"):
        logger.info(f"event loop {loop}, HTTP parser {http} (uvloop + httptools are faster)")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http=http,
        access_log=False,  # imgclf.serve.access_log writes one line per request instead
        log_level="info",  # its start-up and shutdown lines; requests: access_log
        timeout_graceful_shutdown=CLOSE_GRACE_S,
        lifespan="on",
    )
    DrainingServer(config, state, drain_seconds).run()
