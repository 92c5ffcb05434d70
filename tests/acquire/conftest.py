"""Fixtures of the downloader tests: real loopback servers (127.0.0.1, stopped after use)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acquire import sample_images as images
from tests.acquire.faults import fault_routes
from tests.support.loopback import LoopbackServer, respond

# Ray gives a node the address of the interface that routes outwards; with this switch off (read
# when `ray` is first imported, hence here) it uses 127.0.0.1, where every server of the tests
# must listen. Inherited by Ray's workers and by driver subprocesses.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One real local Ray cluster (2 CPUs) for the whole session, started by the first test that
    asks for it; yields its address for drivers in other processes (`--ray-address`)."""
    import ray

    # The workers import this checkout's code, whatever else is installed.
    code = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env=code,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
