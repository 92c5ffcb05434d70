"""HTTP service throughput and latency under a bounded load on loopback, against a naive endpoint
and against `--predict` on a folder, in one run.

Usage (heavy: run it alone, as the house rules ask):
    flock /tmp/imgclf-cpu.lock nice .venv/bin/python benchmarks/serve.py
    flock /tmp/imgclf-cpu.lock nice .venv/bin/python benchmarks/serve.py --backend onnxruntime

Rows, for 1, 8 and 32 concurrent clients (each sends its next request when the last one was
answered; one image per request, the bundled 100x100 demo photos in turn, the same multipart
bytes for every target):
  service   `python utils/serve.py` (micro-batching, the inference process, limits, metrics,
            logs);
  naive     what a user would write instead: a FastAPI endpoint that reads the upload, decodes
            and preprocesses it and runs the model on it, one model call per request, on the
            event loop;
  floor     the naive server's /floor: Starlette parses the same upload, nothing is decoded or
            run, a constant answer: an upper bound for any service on FastAPI + uvicorn here;
  --predict `python utils/inference.py --predict data/demo/sign_language_digits --json`: no HTTP,
            DataLoader workers decoding while the model runs on batches of 32 (its own
            `seconds`, after its warm-up), the ceiling a folder of files gets.
Both servers are uvicorn subprocesses on 127.0.0.1 with the same weights and backend, started
before the first row and warmed up; the load generator (raw asyncio streams, keep-alive,
request bytes built in advance, one process) shares the machine's cores with them, as a client
on the same host would; each row shows the CPU ms per request of the server process and of the
client. Latency is per request, from
sending to the last byte of the answer: p50 / p95 / p99 in ms. Every answer must be a 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from fastapi import (
    Request,
    Response,
    UploadFile,
)  # at module level: FastAPI resolves the endpoint's annotations here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serve.service_fixtures import HOST, ServiceProcess, free_port  # noqa: E402

DEMO = ROOT / "data" / "demo" / "sign_language_digits"
BOUNDARY = "imgclfbenchmarkboundary"
CLIENTS = (1, 8, 32)
FLOOR_ANSWER = b'{"top": [{"class": "0", "probability": 1.0}]}'


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

    @app.post("/floor")
    async def floor(request: Request) -> Response:
        # The floor: the same upload parsed (Starlette's form parser), no decoding, no model,
        # a constant answer. No service over FastAPI + uvicorn on this machine can be faster.
        form = await request.form()
        await form["file"].read()
        return Response(FLOOR_ANSWER, media_type="application/json")

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


def requests_bytes(port: int, path: str, bodies: list[bytes]) -> list[bytes]:
    """Each body as a complete HTTP/1.1 POST to `path`, built once before the timing."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
    )
    return [f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies]


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one keep-alive answer (every target sends a Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(head[9:12]), await reader.readexactly(length)


async def load(
    port: int,
    path: str,
    bodies: list[bytes],
    clients: int,
    requests: int,
    budget_s: float = 1e9,
) -> dict:
    """`requests` POSTs from `clients` concurrent keep-alive connections (fewer when
    `budget_s` seconds are up first: no new request is sent after that); latencies and
    failures. A lean client (raw asyncio streams, request bytes built in advance): it shares
    the two cores with the servers, and aiohttp's own cost per request would be measured as
    theirs (the same client drives every target)."""
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(requests))
    prepared = requests_bytes(port, path, bodies)

    async def client() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for number in counter:
                if time.perf_counter() - begin > budget_s:
                    return
                start = time.perf_counter()
                try:
                    writer.write(prepared[number % len(prepared)])
                    status, body = await _answer(reader)
                except (OSError, asyncio.IncompleteReadError) as error:
                    failures.append(type(error).__name__)
                    return
                if status != 200:
                    failures.append(f"{status} {body[:200]!r}")
                latencies.append((time.perf_counter() - start) * 1e3)
        finally:
            writer.close()

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


def server_cpu_s(server: psutil.Process, children: list[psutil.Process]) -> float:
    """CPU seconds of a server process and of its (still running) child processes."""
    return sum(sum(p.cpu_times()[:2]) for p in (server, *children) if p.is_running())


def timed_load(process, path: str, *args) -> dict:
    """`load` on `process`, with the CPU time its server (with its inference process) and
    this client spent per request meanwhile (ms; where the two cores went)."""
    server, client = psutil.Process(process.process.pid), psutil.Process()
    children = server.children(recursive=True)  # the service's inference process
    before = [server_cpu_s(server, children), sum(client.cpu_times()[:2])]
    result = asyncio.run(load(process.port, path, *args))
    after = [server_cpu_s(server, children), sum(client.cpu_times()[:2])]
    count = max(1, result["requests"])
    result["server_cpu_ms"], result["client_cpu_ms"] = (
        (end - start) * 1e3 / count for start, end in zip(before, after, strict=True)
    )
    return result


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
        cells += f"{result['p50']:.1f} | {result['p95']:.1f} | {result['p99']:.1f} | "
        cells += f"{result['server_cpu_ms']:.2f} | {result['client_cpu_ms']:.2f} |"
    else:
        cells += "- | - | - | - | - |"
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
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ARGS",
        help="also measure the service started with these options (after --service-args), "
        'in the same run, e.g. "--loop asyncio --http h11"; repeatable',
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="rounds at 32 clients of the service and its variants, taken in turn "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--more-clients",
        type=int,
        nargs="+",
        default=[],
        metavar="C",
        help="also load the service and its variants, in turn, at these numbers of clients "
        "(N32 requests each), e.g. 16 64",
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
        "| target | clients | requests | errors | req/s | p50 ms | p95 ms | p99 ms "
        "| server CPU ms/req | client CPU ms/req | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    results: dict[tuple[str, int], dict] = {}
    with contextlib.ExitStack() as running:
        service = running.enter_context(ServiceProcess(args.weights, *service_args))
        variants = {
            f"service {variant}": running.enter_context(
                ServiceProcess(args.weights, *service_args, *shlex.split(variant))
            )
            for variant in args.variant
        }
        naive = running.enter_context(NaiveProcess(args.weights, args.backend))
        targets = {
            "service": (service, "/predict"),
            **{name: (process, "/predict") for name, process in variants.items()},
            "naive": (naive, "/predict"),
            "floor (parse only)": (naive, "/floor"),
        }
        for process, path in targets.values():  # untimed: connections, first calls
            asyncio.run(load(process.port, path, bodies, 8, 100))
        for clients, requests in zip(CLIENTS, args.requests, strict=True):
            for name, (process, path) in targets.items():
                result = timed_load(process, path, bodies, clients, requests, args.row_seconds)
                results[name, clients] = result
                extra = ""
                if name.startswith("service"):
                    extra = f"mean batch so far {mean_batch_size(process.url('')):.1f}"
                lines.append(row(name, str(clients), result, extra))
                print(lines[-1], flush=True)

        def service_rows(clients: int, label: str, *budget_s: float) -> None:
            """One row per service target (the service, then its variants) at `clients`."""
            for name, (process, path) in targets.items():
                if name.startswith("service"):
                    result = timed_load(
                        process, path, bodies, clients, args.requests[2], *budget_s
                    )
                    lines.append(row(name, label, result))
                    print(lines[-1], flush=True)

        # More rounds at 32 clients, the service targets in turn: on a shared machine the
        # others' load changes within seconds, so only interleaved rounds compare options.
        for number in range(2, args.rounds + 1):
            service_rows(32, f"32 (round {number})")
        for clients in args.more_clients:
            service_rows(clients, str(clients), args.row_seconds)
    folder = predict_folder(args.weights, args.backend)
    lines.append(row("--predict folder", "-", folder, "images/s, batches of 32"))
    service32, naive32 = results["service", 32], results["naive", 32]
    print("\n".join(["", *lines, ""]))
    print(
        f"at 32 clients: service / naive = {service32['throughput'] / naive32['throughput']:.2f}x"
        f" (goal >= 2), service / --predict folder = "
        f"{service32['throughput'] / folder['throughput']:.2f}x (goal >= 0.8), "
        f"service p99 {service32['p99']:.0f} ms (goal < 150), floor (parse only) / --predict "
        f"folder = {results['floor (parse only)', 32]['throughput'] / folder['throughput']:.2f}x, "
        f"errors {sum(result['errors'] for result in results.values())} (goal 0)"
    )
    for name in variants:
        variant32 = results[name, 32]
        print(
            f"at 32 clients: {name} / service = "
            f"{variant32['throughput'] / service32['throughput']:.2f}x, p99 "
            f"{variant32['p99']:.0f} ms"
        )


if __name__ == "__main__":
    main()
