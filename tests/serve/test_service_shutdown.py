"""SIGTERM during a request: the service drains (unready, new work refused, the request in
progress answered), then exits 0. A short-lived service process of its own: the signal ends it.
It runs without --index, so it also answers /search with how to enable it, on asyncio's own
loop with the pure-Python h11 parser (the fallback when uvloop and httptools are missing), with
one inference process, which ends with the service.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket

import httpx
import psutil

from tests.serve.service_fixtures import HOST, ServiceProcess, metric, upload, wait_for


def test_sigterm_drains_requests_in_progress_then_exits_0(mobilenet_weights, tiny_root):
    photo = sorted(tiny_root.glob("*/*.jpg"))[0]
    request = httpx.Request(
        "POST", "http://x/predict", files=upload((photo.name, photo.read_bytes()))
    )
    body = request.read()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: {request.headers['Content-Type']}\r\n\r\n"
    ).encode()
    fallback = ("--loop", "asyncio", "--http", "h11", "--inference-processes", "1")
    with ServiceProcess(mobilenet_weights, "--drain-seconds", "60", *fallback) as service:
        client = httpx.Client(base_url=service.url(""), timeout=30)
        # Started without --index: /search says how to enable it.
        search = client.post("/search?k=5", files=upload((photo.name, photo.read_bytes())))
        assert search.status_code == 404 and "--index index/" in search.json()["detail"]
        info = client.get("/info").json()
        assert info["search"] is False
        assert info["server"] == {"loop": "asyncio", "http": "h11"}
        children = psutil.Process(service.process.pid).children(recursive=True)
        assert [child.name() for child in children if child.is_running()]  # the inference process
        # A request in progress: its upload stops halfway until the drain has begun.
        in_progress = socket.create_connection((HOST, service.port))
        in_progress.sendall(head + body[: len(body) // 2])
        wait_for(lambda: metric(client, "imgclf_requests_in_flight") == 1)

        service.signal(signal.SIGTERM)
        wait_for(lambda: client.get("/health/ready").status_code == 503)
        assert "shutting down" in client.get("/health/ready").json()["detail"]
        refused = client.post("/predict", files=upload((photo.name, photo.read_bytes())))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert client.get("/health/live").status_code == 200
        client.close()

        in_progress.sendall(body[len(body) // 2 :])
        answer = http.client.HTTPResponse(in_progress)
        answer.begin()
        assert answer.status == 200
        assert json.loads(answer.read())["results"][0]["input"] == photo.name
        in_progress.close()

        assert service.wait(60) == 0
        assert "draining 1 request(s)" in service.log()
        _gone, alive = psutil.wait_procs(children, timeout=20)
        assert not alive
