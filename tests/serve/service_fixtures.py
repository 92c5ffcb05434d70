"""The real service for tests: `python utils/serve.py` in a subprocess on a free loopback port.

    with ServiceProcess(weights, "--max-images", "4") as service:
        httpx.get(service.url("/health/ready"))
        service.log_lines()  # what it wrote to stderr so far

The process is started with the repository's own interpreter and PYTHONPATH (so it runs this
checkout's code), listens on 127.0.0.1 only, and is stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from tests.conftest import ROOT

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0  # loading torch and warming up on 2 busy cores


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """utils/serve.py running in a subprocess; a context manager that waits until ready."""

    def __init__(self, weights: Path | str, *args: str) -> None:
        self.port = free_port()
        self.args = [
            sys.executable,
            str(ROOT / "utils" / "serve.py"),
            "--weights",
            str(weights),
            "--host",
            HOST,
            "--port",
            str(self.port),
            *args,
        ]
        # Lives as long as the process: closed (and deleted) in __exit__.
        self._log = tempfile.NamedTemporaryFile(prefix="imgclf-serve-", suffix=".log")  # noqa: SIM115
        self.process: subprocess.Popen | None = None

    def url(self, path: str) -> str:
        """The service's address for `path`."""
        return f"http://{HOST}:{self.port}{path}"

    def __enter__(self) -> ServiceProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_ready(self) -> None:
        """Poll /health/ready until 200; fail with the service's log if it died or timed out."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"the service exited with {code}:\n{self.log()}")
            try:
                if httpx.get(self.url("/health/ready"), timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service was not ready within {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        """Everything the service wrote so far (stdout and stderr)."""
        return Path(self._log.name).read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """The log as lines."""
        return self.log().splitlines()

    def signal(self, number: int = signal.SIGTERM) -> None:
        """Send a signal to the service process."""
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to end; returns its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def upload(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx `files=` for multipart parts named `file`."""
    return [("file", (name, data, "application/octet-stream")) for name, data in files]


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The value of one sample in /metrics (0 when absent)."""
    text = client.get("/metrics").text
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for(condition, timeout: float = 30.0) -> None:
    """Poll `condition` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def jpeg_bytes(size: tuple[int, int], colour=(90, 140, 200)) -> bytes:
    """A plain-colour JPEG of `size` (width, height)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()
