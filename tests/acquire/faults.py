"""The faults users meet, as loopback server routes, with the manifest row each must produce."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from aiohttp import web

from tests.acquire import sample_images as images
from tests.support.loopback import LoopbackServer, respond

# Fast settings so the faults (timeouts, retries) cost about a second, not minutes.
FAST = ["--timeout", "1", "--connect-timeout", "1", "--retries", "1", "--retry-delay", "0.01"]
FAST += ["--max-bytes", "100K"]  # the too_large cases send 200-300 KB
SLOW_SECONDS = 3.0
RETRY_AFTER_SECONDS = 1


def fail_first(times: int, status: int, headers: dict[str, str] | None = None, body=b""):
    """A handler answering `status` `times` times, then 200 with `body`; logs request times."""
    calls: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) <= times:
            return web.Response(status=status, headers=headers or {})
        return web.Response(body=body, content_type="image/jpeg")

    handler.calls = calls  # type: ignore[attr-defined]
    return handler


def remember_user_agent(seen: list[str], body: bytes):
    """A handler serving `body` that appends each request's User-Agent to `seen`."""

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("User-Agent", ""))
        return web.Response(body=body, content_type="image/jpeg")

    return handler


async def cut_mid_body(request: web.Request) -> web.StreamResponse:
    """Announce the whole JPEG, send half of it, drop the connection."""
    data = images.jpeg(seed=30, size=(128, 96))
    response = web.StreamResponse(
        headers={"Content-Type": "image/jpeg", "Content-Length": str(len(data))}
    )
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    assert request.transport is not None
    request.transport.close()
    return response


async def longer_than_announced(request: web.Request) -> web.Response:
    """Content-Length says half of the JPEG, the whole JPEG follows (written raw)."""
    data = images.jpeg(seed=31, size=(128, 96))
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(data) // 2}\r\nConnection: close\r\n\r\n"
    )
    assert request.transport is not None
    request.transport.write(head.encode() + data)
    request.transport.close()
    return web.Response()


async def chunked_too_large(request: web.Request) -> web.StreamResponse:
    """No Content-Length (chunked) and more bytes than the cap: caught while streaming."""
    response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(20):
        await response.write(b"\xff" * 10_000)
    await response.write_eof()
    return response


def redirect_chain(prefix: str, hops: int, target: str) -> dict[str, object]:
    """`prefix0 -> prefix1 -> ... -> target`: `hops` redirects in total."""
    routes: dict[str, object] = {}
    for hop in range(hops):
        location = f"{prefix}{hop + 1}" if hop + 1 < hops else target
        routes[f"{prefix}{hop}"] = respond(status=302, headers={"Location": location})
    return routes


USER_AGENTS: list[str] = []


def fault_routes() -> dict[str, object]:
    """Every case of the issue, by path."""
    ok = images.jpeg(seed=1)
    same = images.jpeg(seed=2)
    routes: dict[str, object] = {
        "/ok.jpg": remember_user_agent(USER_AGENTS, ok),
        "/missing.jpg": respond(b"no", status=404, content_type="text/plain"),
        "/forbidden.jpg": respond(b"no", status=403, content_type="text/plain"),
        "/flaky.jpg": fail_first(1, 500, body=images.jpeg(seed=3)),
        "/always500.jpg": respond(b"down", status=500, content_type="text/plain"),
        "/rate-limited.jpg": fail_first(
            1, 429, {"Retry-After": str(RETRY_AFTER_SECONDS)}, images.jpeg(seed=4)
        ),
        "/slow.jpg": respond(ok, delay=SLOW_SECONDS),
        "/cut.jpg": cut_mid_body,
        "/longer.jpg": longer_than_announced,
        "/loop-a": respond(status=302, headers={"Location": "/loop-b"}),
        "/loop-b": respond(status=302, headers={"Location": "/loop-a"}),
        "/redirected.jpg": respond(images.jpeg(seed=5)),
        "/redirected-far.jpg": respond(images.jpeg(seed=6)),
        "/html.jpg": respond(images.html_page()),
        "/empty.jpg": respond(b""),
        "/truncated.jpg": respond(images.truncated_jpeg()),
        "/corrupt.jpg": respond(images.corrupt_jpeg()),
        "/bomb.png": respond(images.decompression_bomb(), content_type="image/png"),
        "/tiny.png": respond(images.one_pixel_png(), content_type="image/png"),
        "/cmyk.jpg": respond(images.cmyk_jpeg()),
        "/deep.png": respond(images.png_16bit(), content_type="image/png"),
        "/palette.png": respond(images.palette_png_with_transparency(), content_type="image/png"),
        "/animated.gif": respond(images.animated_gif(), content_type="image/gif"),
        "/photo.webp": respond(images.webp(), content_type="image/webp"),
        "/webp-named.jpg": respond(images.webp(seed=19), content_type="image/jpeg"),
        "/picture.bmp": respond(images.bmp(), content_type="image/bmp"),
        "/scan.tiff": respond(images.tiff(), content_type="image/tiff"),
        "/rotated.jpg": respond(images.exif_rotated_jpeg()),
        "/noai.jpg": respond(images.jpeg(seed=7), headers={"X-Robots-Tag": "noai"}),
        "/other-bot.jpg": respond(images.jpeg(seed=8), headers={"X-Robots-Tag": "otherbot: noai"}),
        "/same-1.jpg": respond(same),
        "/same-2.jpg": respond(same),
        "/same-3.jpg": respond(same),
        "/evil-label.jpg": respond(images.jpeg(seed=9)),
        "/huge.jpg": respond(b"\xff" * 300_000),
        "/huge-chunked.jpg": chunked_too_large,
    }
    routes.update(redirect_chain("/hop", 3, "/redirected.jpg"))
    routes.update(redirect_chain("/five", 5, "/redirected-far.jpg"))
    routes.update(redirect_chain("/six", 6, "/redirected-far.jpg"))
    return routes


# path or URL -> (label, status, reason); "{base}" is the server's base URL.
EXPECTED: dict[str, tuple[str, str, str]] = {
    "/ok.jpg": ("cat", "ok", ""),
    "/missing.jpg": ("cat", "failed", "http_404"),
    "/forbidden.jpg": ("cat", "failed", "http_403"),
    "/flaky.jpg": ("cat", "ok", ""),
    "/always500.jpg": ("cat", "failed", "http_500"),
    "/rate-limited.jpg": ("cat", "ok", ""),
    "/slow.jpg": ("cat", "failed", "timeout"),
    "/cut.jpg": ("cat", "failed", "incomplete"),
    "/longer.jpg": ("cat", "failed", "bad_response"),
    "/loop-a": ("cat", "failed", "too_many_redirects"),
    "/hop0": ("cat", "ok", ""),
    "/five0": ("cat", "ok", ""),
    "/six0": ("dog", "failed", "too_many_redirects"),
    "/html.jpg": ("cat", "failed", "not_image"),
    "/empty.jpg": ("cat", "failed", "empty"),
    "/truncated.jpg": ("cat", "failed", "corrupt"),
    "/corrupt.jpg": ("cat", "failed", "corrupt"),
    "/bomb.png": ("cat", "failed", "too_many_pixels"),
    "/tiny.png": ("cat", "failed", "too_small"),
    "/cmyk.jpg": ("dog", "ok", ""),
    "/deep.png": ("dog", "ok", ""),
    "/palette.png": ("dog", "ok", ""),
    "/animated.gif": ("dog", "ok", ""),
    "/photo.webp": ("dog", "ok", ""),
    "/webp-named.jpg": ("dog", "ok", ""),
    "/picture.bmp": ("dog", "ok", ""),
    "/scan.tiff": ("dog", "ok", ""),
    "/rotated.jpg": ("dog", "ok", ""),
    "/noai.jpg": ("dog", "failed", "opted_out"),
    "/other-bot.jpg": ("dog", "ok", ""),
    "/same-1.jpg": ("cat", "ok", ""),
    "/same-2.jpg": ("cat", "duplicate", "duplicate"),
    "/same-3.jpg": ("dog", "duplicate", "duplicate"),
    "/evil-label.jpg": ("../evil", "ok", ""),
    "/huge.jpg": ("cat", "failed", "too_large"),
    "/huge-chunked.jpg": ("cat", "failed", "too_large"),
    "ftp://{host}/file.jpg": ("cat", "failed", "unsupported_scheme"),
    "http://[::1/broken": ("cat", "failed", "invalid_url"),
    "not a url at all": ("cat", "failed", "invalid_url"),
}


def full_url(server: LoopbackServer, key: str) -> str:
    if key.startswith("/"):
        return server.url(key)
    return key.format(host=f"127.0.0.1:{server.port}")


def write_list(path: Path, rows: list[tuple[str, ...]], header=("url", "label")) -> Path:
    """Write a CSV URL list."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_rows(out: Path) -> list[dict[str, str]]:
    """The manifest rows of a run, in file order."""
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
