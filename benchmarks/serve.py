"""HTTP service throughput and latency under a bounded load on loopback, against a naive endpoint
and against `--predict` on a folder, in one run.

Usage (heavy: run it alone, as the house rules ask):
    flock /tmp/imgclf-cpu.lock nice .venv/bin/python benchmarks/serve.py
    flock /tmp/imgclf-cpu.lock nice .venv/bin/python benchmarks/serve.py --backend onnxruntime

Rows, for 1, 8 and 32 concurrent clients (each sends its next request when the last one was
answered; one image per request, the bundled 100x100 demo photos in turn, the same multipart
bytes for every target):
  service   `python utils/serve.py` (micro-batching, decoding threads, limits, metrics, logs);
  naive     what a user would write instead: a FastAPI endpoint that reads the upload, decodes
            and preprocesses it and runs the model on it, one model call per request, on the
            event loop;
  --predict `python utils/inference.py --predict data/demo/sign_language_digits --json`: no HTTP,
            DataLoader workers decoding while the model runs on batches of 32 (its own
            `seconds`, after its warm-up), the ceiling a folder of files gets.
Both servers are uvicorn subprocesses on 127.0.0.1 with the same weights and backend, started
before the first row and warmed up; the load generator (aiohttp, one process) shares the
machine's cores with them, as a client on the same host would. Latency is per request, from
sending to the last byte of the answer: p50 / p95 / p99 in ms. Every answer must be a 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from fastapi import UploadFile  # at module level: FastAPI resolves the endpoint's annotations here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serve.service_fixtures import HOST, ServiceProcess, free_port  # noqa: E402

DEMO = ROOT / "data" / "demo" / "sign_language_digits"
BOUNDARY = "imgclfbenchmarkboundary"
CLIENTS = (1, 8, 32)


def multipart(name: str, data: bytes) -> bytes:
    """One `file` part, as curl -F file=@photo.jpg sends it."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def naive_server(weights: str, backend: str | None, port: int) -> None:
    """The naive endpoint (runs in its own process: `benchmarks/serve.py --naive-port N`)."""
    import uvicorn
    from fastapi import FastAPI

    from imgclf.decoding import decode_rgb
    from imgclf.model.predictor import load_predictor

    predictor = load_predictor(weights, backend)
    predictor.warm_up(1)
    app = FastAPI()

    @app.get("/health/ready")
    async def ready() -> dict:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(file: UploadFile) -> dict:
        # The service's pipeline (decode, eval preset, engine), one image per model call.
        # Not Predictor.classify: its switch to one torch thread and back around every call
        # made each eager-torch call take 100+ ms here (measured on 2026-12-01).
        image = predictor.preset(decode_rgb(await file.read()))
        probabilities = predictor.probabilities(image[None])[0]
        top = np.argsort(-probabilities)[:5]
        return {
            "top": [
                {"class": predictor.classes[k], "probability": float(probabilities[k])}
                for k in top
            ]
        }

    uvicorn.run(app, host=HOST, port=port, access_log=False, log_level="warning")


class NaiveProcess(ServiceProcess):
    """The naive endpoint in a subprocess, started and stopped like the service."""

    def __init__(self, weights: str, backend: str | None) -> None:
        super().__init__(weights)
        self.port = free_port()
        self.args = [sys.executable, __file__, "--weights", weights]
        self.args += ["--naive-port", str(self.port)]
        if backend:
            self.args += ["--backend", backend]


async def load(
    url: str, bodies: list[bytes], clients: int, requests: int, budget_s: float = 1e9
) -> dict:
    """`requests` POSTs from `clients` concurrent clients (fewer when `budget_s` seconds are
    up first: no new request is sent after that); latencies and failures."""
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(requests))
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            for number in counter:
                if time.perf_counter() - begin > budget_s:
                    return
                start = time.perf_counter()
                try:
                    async with session.post(
                        url, data=bodies[number % len(bodies)], headers=headers
                    ) as answer:
                        await answer.read()
                        if answer.status != 200:
                            failures.append(f"{answer.status} {(await answer.text())[:200]}")
                except aiohttp.ClientError as error:
                    failures.append(type(error).__name__)
                latencies.append((time.perf_counter() - start) * 1e3)

        begin = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - begin
    values = np.array(latencies)
    if failures:
        print(f"  {len(failures)} failed, first: {failures[0]}", flush=True)
    return {
        "requests": len(latencies),
        "errors": len(failures),
        "throughput": len(latencies) / seconds,
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "p99": float(np.percentile(values, 99)),
    }


def predict_folder(weights: str, backend: str | None) -> dict:
    """`utils/inference.py --predict` on the demo folder: images per second of its run."""
    command = [sys.executable, str(ROOT / "utils" / "inference.py"), "--weights", weights]
    command += ["--predict", str(DEMO), "--json"] + (["--backend", backend] if backend else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"--predict failed:\n{done.stderr[-3000:]}")
    payload = json.loads(done.stdout)
    return {
        "requests": payload["images"],
        "errors": payload["failed"],
        "throughput": payload["images"] / payload["seconds"],
    }


def mean_batch_size(base_url: str) -> float:
    """The service's mean images per engine call so far, from /metrics."""
    import httpx

    text = httpx.get(base_url + "/metrics").text
    total = float(re.search(r"^imgclf_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^imgclf_batch_size_count (\S+)$", text, re.M).group(1))
    return total / count if count else 0.0


def row(target: str, clients: str, result: dict, extra: str = "") -> str:
    cells = f"| {target} | {clients} | {result['requests']} | {result['errors']} | "
    cells += f"{result['throughput']:.0f} | "
    if "p50" in result:
        cells += f"{result['p50']:.1f} | {result['p95']:.1f} | {result['p99']:.1f} |"
    else:
        cells += "- | - | - |"
    return cells + f" {extra} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="weights/mobilenet_v3_small.pth")
    parser.add_argument("--backend", choices=("torch", "torchscript", "onnxruntime"))
    parser.add_argument(
        "--requests",
        type=int,
        nargs=3,
        default=(300, 1000, 2000),
        metavar=("N1", "N8", "N32"),
        help="requests at 1, 8 and 32 clients (default: %(default)s)",
    )
    parser.add_argument(
        "--row-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="no new request in a row after this long (default: %(default)s)",
    )
    parser.add_argument(
        "--service-args",
        default="",
        metavar="ARGS",
        help='more options for utils/serve.py, e.g. "--max-wait-ms 5 --max-batch-size 16"',
    )
    parser.add_argument("--naive-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_port:
        naive_server(args.weights, args.backend, args.naive_port)
        return
    photos = sorted(DEMO.glob("*/*.jpg"))
    bodies = [multipart(path.name, path.read_bytes()) for path in photos]
    backend_args = ("--backend", args.backend) if args.backend else ()
    service_args = (*backend_args, *shlex.split(args.service_args))
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, "
        f"python {platform.python_version()}; {args.weights}, backend "
        f"{args.backend or 'default'}; {len(photos)} demo photos; service options: "
        f"{args.service_args or 'defaults'}",
        flush=True,
    )
    lines = [
        "| target | clients | requests | errors | req/s | p50 ms | p95 ms | p99 ms | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    results: dict[tuple[str, int], dict] = {}
    with (
        ServiceProcess(args.weights, *service_args) as service,
        NaiveProcess(args.weights, args.backend) as naive,
    ):
        targets = {"service": service, "naive": naive}
        for process in targets.values():  # untimed: connections, first calls
            asyncio.run(load(process.url("/predict"), bodies, 8, 100))
        for clients, requests in zip(CLIENTS, args.requests, strict=True):
            for name, process in targets.items():
                url = process.url("/predict")
                result = asyncio.run(load(url, bodies, clients, requests, args.row_seconds))
                results[name, clients] = result
                extra = ""
                if name == "service":
                    extra = f"mean batch so far {mean_batch_size(service.url('')):.1f}"
                lines.append(row(name, str(clients), result, extra))
                print(lines[-1], flush=True)
    folder = predict_folder(args.weights, args.backend)
    lines.append(row("--predict folder", "-", folder, "images/s, batches of 32"))
    service32, naive32 = results["service", 32], results["naive", 32]
    print("\n".join(["", *lines, ""]))
    print(
        f"at 32 clients: service / naive = {service32['throughput'] / naive32['throughput']:.2f}x"
        f" (goal >= 2), service / --predict folder = "
        f"{service32['throughput'] / folder['throughput']:.2f}x (goal >= 0.8), "
        f"service p99 {service32['p99']:.0f} ms (goal < 150), "
        f"errors {sum(result['errors'] for result in results.values())} (goal 0)"
    )


if __name__ == "__main__":
    main()
