"""One log line and the request metrics per HTTP request, as the outermost ASGI middleware.

The line holds method, path, status and milliseconds (plus the client address), as plain text
or, with --log-json, as one JSON object per line. It sees every answer, the limits' refusals
included; a request whose client went away before any answer is logged with status 499 (the
nginx convention), so the line count always equals the request count.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER_NAME = "imgclf.serve"
CLIENT_CLOSED = 499


def configure_logging() -> logging.Logger:
    """The service's logger, writing each record as one line to stderr."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def format_line(record: dict, json_lines: bool) -> str:
    """`POST /predict 200 12.3 ms 127.0.0.1` or the same fields as one JSON object."""
    if json_lines:
        return json.dumps(record, separators=(",", ":"))
    return (
        f"{record['method']} {record['path']} {record['status']} {record['ms']:.1f} ms "
        f"{record['client']}"
    )


class AccessLog:
    """ASGI middleware: log line, request counter and latency histogram per request."""

    def __init__(self, app, *, metrics, endpoints: frozenset[str], json_lines: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints
        self.json_lines = json_lines
        self.logger = logging.getLogger(LOGGER_NAME)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = CLIENT_CLOSED

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            seconds = time.perf_counter() - start
            path = scope["path"]
            endpoint = path if path in self.endpoints else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            client = scope.get("client") or ("-", 0)
            record = {
                "ts": round(time.time(), 3),
                "method": scope["method"],
                "path": path,
                "status": status,
                "ms": round(seconds * 1e3, 2),
                "client": client[0],
            }
            self.logger.info(format_line(record, self.json_lines))
