"""The bounded, timeout-guarded URL fetch and the expansion of --predict arguments."""

from __future__ import annotations

import pytest

from imgclf.predict.inputs import Item, expand_inputs, fetch_url
from tests.support.loopback import LoopbackServer, respond


def test_fetch_url_limits_size_and_time():
    routes = {
        "/ok": respond(b"x" * 100),
        "/big": respond(b"x" * 2000),
        "/slow": respond(b"x", delay=2.0),
        "/teapot": respond(b"", status=418),
    }
    with LoopbackServer(routes) as server:
        assert fetch_url(server.url("/ok"), max_bytes=100) == b"x" * 100
        with pytest.raises(OSError, match="exceeds 1000 bytes"):
            fetch_url(server.url("/big"), max_bytes=1000)
        with pytest.raises(OSError, match=r"no answer within 0\.3 s"):
            fetch_url(server.url("/slow"), timeout=0.3)
        with pytest.raises(OSError, match="HTTP 418"):
            fetch_url(server.url("/teapot"))


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
