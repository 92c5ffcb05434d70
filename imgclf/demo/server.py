"""A throwaway HTTP server on 127.0.0.1: a folder's files plus a few planted responses.

Used as a context manager so the server stops whatever happens in the block (an error, Ctrl-C).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Planted:
    """A response served at a fixed URL path instead of a file."""

    body: bytes
    content_type: str


class _Handler(SimpleHTTPRequestHandler):
    # Keep-alive: the downloader reuses connections, as it would against a real web server.
    protocol_version = "HTTP/1.1"
    planted: Mapping[str, Planted] = {}

    def do_GET(self) -> None:
        planted = self.planted.get(self.path.split("?", 1)[0])
        if planted is None:
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Type", planted.content_type)
        self.send_header("Content-Length", str(len(planted.body)))
        self.end_headers()
        self.wfile.write(planted.body)

    def list_directory(self, path: str) -> None:
        # A folder URL is not a file: answer 404 instead of an HTML listing.
        self.send_error(404, "Not Found")
        return None

    def log_message(self, format: str, *args: object) -> None:
        # Thousands of request lines would bury the pipeline's own output.
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The downloader opens many connections at once; the default backlog of 5 drops some.
    request_queue_size = 1024


@contextmanager
def serve_folder(root: Path, planted: Mapping[str, Planted] | None = None) -> Iterator[str]:
    """Serve `root` (and `planted` paths) on a free port of 127.0.0.1; yields the base URL."""
    handler = type("DemoHandler", (_Handler,), {"planted": dict(planted or {})})
    server = _Server((HOST, 0), functools.partial(handler, directory=str(root)))
    # A short poll interval makes shutdown() return at once instead of after up to 0.5 s.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="demo-http-server", daemon=True
    )
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
