"""Admission, body cap and deadline of the work endpoints (/predict, /search), as ASGI middleware.

It runs before the body is read, so a refusal costs nothing:
- not ready (warming up, draining) → 503 with `Retry-After`;
- more than `max_queue` requests admitted at once → 503 with `Retry-After` (the queue is full);
- a declared `Content-Length` over the cap → 413 without reading the body; a body that streams
  past the cap (chunked) → 413 as soon as it does;
- the whole request (upload, decoding, waiting for a batch, the engine) past its deadline →
  504: the server's `--deadline-ms`, or a shorter `timeout_ms` query parameter of the request.
The waiting work is cancelled with it: its images leave the batcher's queue unscored.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

from imgclf.serve.lifecycle import ServiceState
from imgclf.serve.settings import RETRY_AFTER_S, ServiceSettings

WORK_PATHS = frozenset({"/predict", "/search"})


class BodyTooLarge(Exception):
    """The request body grew past the cap while streaming."""


async def send_error(send, status: int, detail: str, headers: dict[str, str] | None = None):
    """Send a complete JSON error response `{"detail": ...}`."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def requested_timeout_ms(query_string: bytes, ceiling: int) -> int:
    """The request's `timeout_ms` when it is a whole number in 1..ceiling, else `ceiling`
    (the endpoint's own validation answers 422 to a bad value)."""
    values = parse_qs(query_string.decode("latin-1")).get("timeout_ms", [])
    if values and values[-1].isdigit() and 1 <= int(values[-1]) <= ceiling:
        return int(values[-1])
    return ceiling


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length header as a number, None when absent or not a number."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class RequestLimits:
    """ASGI middleware applying the limits above to WORK_PATHS; other paths pass through."""

    def __init__(self, app, *, settings: ServiceSettings, state: ServiceState, metrics) -> None:
        self.app = app
        self.settings = settings
        self.state = state
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in WORK_PATHS:
            await self.app(scope, receive, send)
            return
        state, settings = self.state, self.settings
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if not state.ready:
            closing = {"Connection": "close"} if state.draining else {}
            await send_error(send, 503, state.not_ready_reason(), retry | closing)
            return
        cap = settings.max_body_bytes
        declared = declared_length(scope["headers"])
        if declared is not None and declared > cap:
            await send_error(send, 413, _too_large(declared, cap))
            return
        if state.in_flight >= settings.max_queue:
            detail = (
                f"the service's queue is full ({settings.max_queue} requests in progress); "
                f"retry after {RETRY_AFTER_S} s"
            )
            await send_error(send, 503, detail, retry)
            return
        timeout_ms = requested_timeout_ms(scope["query_string"], settings.deadline_ms)
        state.in_flight += 1
        self.metrics.in_flight.set(state.in_flight)
        try:
            await self._within_limits(scope, receive, send, cap, timeout_ms)
        finally:
            state.in_flight -= 1
            self.metrics.in_flight.set(state.in_flight)

    async def _within_limits(self, scope, receive, send, cap: int, timeout_ms: int) -> None:
        received = 0
        started = False

        async def capped_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            # asyncio.timeout, not wait_for: no extra task per request (wait_for makes one).
            async with asyncio.timeout(timeout_ms / 1e3):
                await self.app(scope, capped_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, _too_large(None, cap), {"Connection": "close"})
        except TimeoutError:
            if not started:
                detail = (
                    f"the request took longer than its deadline of {timeout_ms} ms; retry "
                    "later, with fewer images, or with a larger timeout_ms "
                    f"(at most {self.settings.deadline_ms})"
                )
                await send_error(send, 504, detail)


def _too_large(size: int | None, cap: int) -> str:
    body = "the request body" if size is None else f"the request body of {size} bytes"
    return (
        f"{body} is larger than the service's cap of {cap} bytes (--max-body-bytes); "
        "send fewer or smaller images"
    )
