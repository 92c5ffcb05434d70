"""Fixtures of the downloader tests: real loopback servers (127.0.0.1, stopped after use)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.acquire import sample_images as images
from tests.acquire.faults import fault_routes
from tests.support.loopback import LoopbackServer, respond


@pytest.fixture(scope="module")
def fault_server() -> Iterator[LoopbackServer]:
    with LoopbackServer(fault_routes()) as server:
        yield server


@pytest.fixture
def jpeg_server() -> Iterator[LoopbackServer]:
    """40 distinct JPEGs at /img/<i>.jpg, a 404 at /gone.jpg."""
    routes = {f"/img/{i}.jpg": respond(images.jpeg(seed=100 + i)) for i in range(40)}
    with LoopbackServer(routes) as server:
        yield server
