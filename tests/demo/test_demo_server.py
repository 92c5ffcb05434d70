"""The demo's throwaway HTTP server: serves files and planted bodies, 404s, always stops."""

from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgclf.demo.server import Planted, serve_folder
from tests.conftest import make_image_folder


def fetch(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Type"]


def test_serves_files_byte_for_byte_and_planted_bodies(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=2)
    planted = {"/broken/page.jpg": Planted(b"<p>hello</p>", "text/html")}
    with serve_folder(root, planted) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        status, body, content_type = fetch(f"{base_url}/circle/000.jpg")
        assert (status, content_type) == (200, "image/jpeg")
        assert body == (root / "circle" / "000.jpg").read_bytes()
        assert fetch(f"{base_url}/broken/page.jpg") == (200, b"<p>hello</p>", "text/html")


@pytest.mark.parametrize("path", ["/circle/999.jpg", "/circle/", "/../conftest.py"])
def test_missing_files_and_folders_are_404(tmp_path, path):
    root = make_image_folder(tmp_path / "images", per_class=1)
    (tmp_path / "conftest.py").write_text("outside the served folder")
    with serve_folder(root) as base_url:
        assert fetch(base_url + path)[0] == 404


def test_many_concurrent_clients_are_all_served(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=20)
    files = sorted(root.glob("*/*.jpg"))
    with serve_folder(root) as base_url, ThreadPoolExecutor(max_workers=32) as pool:
        urls = [f"{base_url}/{path.relative_to(root).as_posix()}" for path in files] * 4
        results = list(pool.map(fetch, urls))
    assert [status for status, _, _ in results] == [200] * len(urls)
    assert [body for _, body, _ in results] == [path.read_bytes() for path in files] * 4


def test_server_stops_after_the_block_even_on_ctrl_c(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=1)
    with pytest.raises(KeyboardInterrupt), serve_folder(root) as base_url:
        assert fetch(f"{base_url}/square/000.jpg")[0] == 200
        raise KeyboardInterrupt
    with pytest.raises(urllib.error.URLError):
        fetch(f"{base_url}/square/000.jpg")
