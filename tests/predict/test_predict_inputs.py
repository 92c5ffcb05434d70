"""The bounded, timeout-guarded URL fetch and the expansion of --predict arguments."""

from __future__ import annotations

import asyncio
import functools
import io
import struct
import zlib

import pytest
from aiohttp import web
from PIL import Image

from imgclf.imaging import pixel_count
from imgclf.predict.inputs import Item, _header_pixels, expand_inputs, fetch_url, read_item
from tests.support.loopback import LoopbackServer, respond


def test_fetch_url_limits_size_and_time():
    routes = {
        "/ok": respond(b"x" * 100),
        "/big": respond(b"x" * 2000),
        "/slow": respond(b"x", delay=2.0),
        "/teapot": respond(b"", status=418),
    }
    with LoopbackServer(routes) as server:
        fetch = functools.partial(fetch_url, block_private=False)  # the server is on loopback
        assert fetch(server.url("/ok"), max_bytes=100) == b"x" * 100
        with pytest.raises(OSError, match="exceeds 1000 bytes"):
            fetch(server.url("/big"), max_bytes=1000)
        with pytest.raises(OSError, match=r"no complete answer within 0\.3 s"):
            fetch(server.url("/slow"), timeout=0.3)
        with pytest.raises(OSError, match="HTTP 418"):
            fetch(server.url("/teapot"))


def test_a_body_that_trickles_hits_the_total_deadline():
    async def trickle(request):
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        for _ in range(300):  # a byte every 0.2 s: each read is quick, the body takes a minute
            await response.write(b"\xff")
            await asyncio.sleep(0.2)
        return response

    with (
        LoopbackServer({"/trickle.jpg": trickle}) as server,
        pytest.raises(OSError, match=r"no complete answer within 1 s"),
    ):
        fetch_url(server.url("/trickle.jpg"), timeout=1, block_private=False)


def test_urls_reach_only_public_addresses_unless_allowed():
    with LoopbackServer({"/cat.jpg": respond(b"x" * 10)}) as server:
        for url in (server.url("/cat.jpg"), f"http://localhost:{server.port}/cat.jpg"):
            with pytest.raises(OSError, match=r"not a globally routable address.*allow-private"):
                read_item(Item(url))
        assert server.hits["/cat.jpg"] == 0
        assert read_item(Item(server.url("/cat.jpg")), block_private=False) == b"x" * 10
    with pytest.raises(OSError, match="not a globally routable"):
        read_item(Item("http://100.100.100.200/latest/meta-data/"))  # refused before connect


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` (what a decompression bomb looks like up front)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    ihdr_chunk = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 16)
    body = b"IDAT" + idat
    idat_chunk = struct.pack(">I", len(idat)) + body + struct.pack(">I", zlib.crc32(body))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + ihdr_chunk + idat_chunk + end


def test_images_above_the_pixel_cap_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(12_000, 12_000))  # 144 megapixels in a few dozen bytes
    with pytest.raises(
        OSError, match=r"image of 144,000,000 pixels, above the limit of 50,000,000"
    ):
        read_item(Item(str(bomb)))
    routes = {"/bomb.png": respond(bomb.read_bytes(), content_type="image/png")}
    with LoopbackServer(routes) as server, pytest.raises(OSError, match="above the limit"):
        read_item(Item(server.url("/bomb.png")), block_private=False)
    small = tmp_path / "small.png"
    small.write_bytes(png_header(64, 48))
    assert read_item(Item(str(small))) == small.read_bytes()


def test_a_jpeg_is_measured_from_its_frame_header_as_pillow_measures_it(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 200)).save(buffer, "JPEG")
    data = buffer.getvalue()
    assert _header_pixels(data) == pixel_count(data) == 64 * 48
    frame = data.index(b"\xff\xc0")  # baseline frame header: height, width after 5 bytes
    bomb = data[: frame + 5] + struct.pack(">HH", 12_000, 12_000) + data[frame + 9 :]
    assert _header_pixels(bomb) == pixel_count(bomb) == 144_000_000
    (tmp_path / "bomb.jpg").write_bytes(bomb)
    with pytest.raises(OSError, match=r"image of 144,000,000 pixels, above the limit"):
        read_item(Item(str(tmp_path / "bomb.jpg")))
    assert _header_pixels(b"not an image") is None


def test_expand_inputs_keeps_order_and_skips_non_images_in_folders(tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name in ("b.jpg", "a.PNG", "README.md", "nested/c.webp", ".hidden.jpg"):
        (folder / name).write_bytes(b"")
    items = expand_inputs(["https://example.com/x.jpg", str(folder), str(tmp_path / "nope")])
    assert items == [
        Item("https://example.com/x.jpg"),
        Item(str(folder / "a.PNG")),
        Item(str(folder / "b.jpg")),
        Item(str(folder / "nested" / "c.webp")),
        Item(str(tmp_path / "nope"), error="no such file, folder or http(s) URL"),
    ]
