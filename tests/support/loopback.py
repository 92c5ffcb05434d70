"""A real aiohttp HTTP server on 127.0.0.1 for tests and benchmarks: no mocks, real sockets.

In a background thread (tests; `hits` counts requests per path)::

    from tests.support.loopback import LoopbackServer, respond

    with LoopbackServer({"/cat.jpg": respond(jpeg_bytes)}) as server:
        fetch(server.url("/cat.jpg"))
        assert server.hits["/cat.jpg"] == 1

In its own process (benchmarks: the server must not share the client's GIL)::

    with serve_in_process(make_routes, 10_000) as base_url:  # make_routes(10_000) -> routes
        ...

`routes` maps a path to an aiohttp handler `async def handler(request) -> web.StreamResponse`;
`respond(...)` builds the common one. The server listens on 127.0.0.1 only, on a free port, with a
large listen backlog (many concurrent clients otherwise see dropped connections), and is stopped
when the `with` block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Routes = Mapping[str, Handler]
HOST = "127.0.0.1"
BACKLOG = 4096


def respond(
    body: bytes = b"",
    *,
    status: int = 200,
    content_type: str = "image/jpeg",
    headers: Mapping[str, str] | None = None,
    delay: float = 0.0,
) -> Handler:
    """A handler answering `status` with `body` after `delay` seconds."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(
            body=body, status=status, content_type=content_type, headers=dict(headers or {})
        )

    return handler


def _app(routes: Routes, hits: Counter[str] | None) -> web.Application:
    async def dispatch(request: web.Request) -> web.StreamResponse:
        if hits is not None:
            hits[request.path] += 1
        handler = routes.get(request.path)
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", dispatch)
    return app


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=BACKLOG)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


class LoopbackServer:
    """Serve `routes` on 127.0.0.1 from a background thread; use as a context manager."""

    def __init__(self, routes: Routes) -> None:
        self.routes = dict(routes)
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this server."""
        return f"{self.base_url}{path}"

    def start(self) -> LoopbackServer:
        """Start listening; returns self."""
        self._thread.start()
        app = _app(self.routes, self.hits)
        future = asyncio.run_coroutine_threadsafe(_start(app), self._loop)
        self._runner, self.port = future.result(timeout=10)
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket, then end the thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _serve_child(make_routes: Callable[..., Routes], args: tuple[Any, ...], conn: Any) -> None:
    async def main() -> None:
        runner, port = await _start(_app(make_routes(*args), None))
        conn.send(port)
        loop = asyncio.get_running_loop()
        # The parent closes its end of the pipe to stop us.
        await loop.run_in_executor(None, _wait_closed, conn)
        await runner.cleanup()

    asyncio.run(main())


def _wait_closed(conn: Any) -> None:
    with contextlib.suppress(EOFError, OSError):
        conn.recv()


@contextlib.contextmanager
def serve_in_process(make_routes: Callable[..., Routes], *args: Any) -> Iterator[str]:
    """Run a server with `make_routes(*args)` in a child process; yields its base URL.

    `make_routes` must be importable (a module-level function): the child builds the routes
    itself, so large bodies are never pickled.
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_child, args=(make_routes, args, child), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(120):
            raise RuntimeError("the loopback server process did not start within 120 s")
        yield f"http://{HOST}:{parent.recv()}"
    finally:
        parent.close()
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join()
