"""Downloader throughput against the fetch + decode ceiling and a naive threaded downloader.

Usage (heavy: run it alone, as the house rules ask):
    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/download.py
    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/download.py --images 2000 --latency 0

A loopback server in its own process serves `--images` distinct small JPEGs (about 10-20 KB);
10 % of the URLs are faulty (404, truncated JPEG, HTML served as image/jpeg). Every response can
be delayed (`--latency`, seconds) to mimic the internet. For each latency it measures:

  ceiling     the least work any validating downloader must do: aiohttp GETs with as many
              requests in flight as the downloader's default, each body fully decoded with
              Pillow and hashed, no writes (best of: decode inline / in worker processes);
  imgclf      `utils/download_data.py` end to end: process start to exit, files + manifest;
  naive       what a user would write instead: 32 threads of urllib + PIL verify + write.

It prints URLs per second (every URL counts, faulty ones too), the ratio to the ceiling, and
the peak memory (RSS, main process + workers) of the imgclf run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import aiohttp
import psutil
from aiohttp import web
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf.acquire.fetcher import FetchOptions  # noqa: E402
from tests.support.loopback import serve_in_process  # noqa: E402

BASE_IMAGES = 200
LABELS = 10


# -- the server (runs in its own process) ----------------------------------------------------


def _base_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Distinct photo-like JPEGs of about 10-20 KB: shapes, blur and noise at 160x160."""
    rng = random.Random(seed)
    images = []
    for _ in range(count):
        image = Image.new("RGB", (160, 160), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _shape in range(12):
            x, y = rng.randrange(160), rng.randrange(160)
            r = rng.randrange(8, 50)
            draw.ellipse(
                (x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in "rgb")
            )
        image = image.filter(ImageFilter.GaussianBlur(1))
        noise = Image.effect_noise((160, 160), 40).convert("RGB")
        image = Image.blend(image, noise, 0.25)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=88)
        images.append(buffer.getvalue())
    return images


def _unique(jpeg: bytes, index: int) -> bytes:
    """Same pixels, distinct bytes: a JPEG comment segment carrying the index after SOI."""
    comment = f"image {index}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def fault_of(index: int) -> str:
    """'' for a good URL; one in ten is faulty, cycling through 404, truncated and HTML."""
    if index % 10:
        return ""
    return ("404", "truncated", "html")[(index // 10) % 3]


def make_routes(count: int) -> dict:
    """`/img/<i>.jpg` for i < count; `?delay=S` delays the answer by S seconds."""
    base = _base_jpegs(BASE_IMAGES)
    routes = {}
    for index in range(count):
        jpeg = _unique(base[index % BASE_IMAGES], index)
        fault = fault_of(index)
        status, body, kind = 200, jpeg, "image/jpeg"
        if fault == "404":
            status, body, kind = 404, b"not found", "text/plain"
        elif fault == "truncated":
            body = jpeg[: len(jpeg) * 6 // 10]
        elif fault == "html":
            body = b"<!doctype html><html><body>" + b"x" * 2000 + b"</body></html>"
        routes[f"/img/{index}.jpg"] = _handler(status, body, kind)
    return routes


def _handler(status: int, body: bytes, kind: str):
    async def handler(request: web.Request) -> web.Response:
        delay = float(request.query.get("delay", 0))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=body, status=status, content_type=kind)

    return handler


# -- (a) the ceiling ---------------------------------------------------------------------------


def _decode_and_hash(body: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
    except Exception:
        return False
    hashlib.sha256(body).hexdigest()
    return True


async def _ceiling(urls: list[str], in_flight: int, pool: ProcessPoolExecutor | None) -> int:
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=in_flight, limit_per_host=in_flight)
    gate = asyncio.Semaphore(in_flight)
    good = 0

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal good
        async with gate, session.get(url) as response:
            body = await response.read()
            if response.status != 200:
                return
        if pool is None:
            good += _decode_and_hash(body)
        else:
            good += await loop.run_in_executor(pool, _decode_and_hash, body)

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, url) for url in urls))
    return good


def run_ceiling(urls: list[str], in_flight: int, workers: int) -> tuple[float, str]:
    """Best of decoding inline and decoding in worker processes: (seconds, which)."""
    results = []
    start = time.perf_counter()
    asyncio.run(_ceiling(urls, in_flight, None))
    results.append((time.perf_counter() - start, "inline decode"))
    with ProcessPoolExecutor(workers) as pool:
        pool.submit(int).result()
        start = time.perf_counter()
        asyncio.run(_ceiling(urls, in_flight, pool))
        results.append((time.perf_counter() - start, f"{workers} decode processes"))
    return min(results)


# -- (b) the downloader end to end -------------------------------------------------------------


def run_imgclf(list_path: Path, out: Path) -> tuple[float, float, int]:
    """(seconds from process start to exit, peak RSS MiB of the process tree, exit code)."""
    command = [sys.executable, str(ROOT / "utils/download_data.py")]
    command += ["--urls", str(list_path), "--out", str(out), "--quiet"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    return seconds, peak / 2**20, process.returncode


# -- (c) what a user would write ---------------------------------------------------------------


def run_naive(urls: list[str], out: Path) -> float:
    """32 threads: urllib GET, PIL verify(), write the file. Seconds."""
    out.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[int, str]) -> None:
        index, url = item
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read()
            Image.open(io.BytesIO(body)).verify()
        except (urllib.error.URLError, OSError, SyntaxError):
            return
        (out / f"{index}.jpg").write_bytes(body)

    start = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, enumerate(urls)))
    return time.perf_counter() - start


# -- driver --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="number of URLs")
    parser.add_argument(
        "--latency", type=float, nargs="+", default=[0.0, 0.05], help="per-response delays (s)"
    )
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive baseline")
    args = parser.parse_args()
    defaults = FetchOptions()
    in_flight = min(defaults.concurrency, defaults.per_host)
    workers = os.cpu_count() or 1
    print(
        f"{args.images:,} URLs ({sum(bool(fault_of(i)) for i in range(args.images)):,} faulty), "
        f"{in_flight} requests in flight, {workers} CPU cores, Python {sys.version.split()[0]}"
    )
    rows = []
    with (
        serve_in_process(make_routes, args.images) as base_url,
        tempfile.TemporaryDirectory(dir=ROOT / "data") as scratch,
    ):
        for latency in args.latency:
            query = f"?delay={latency}" if latency else ""
            urls = [f"{base_url}/img/{i}.jpg{query}" for i in range(args.images)]
            list_path = Path(scratch) / f"urls-{latency}.csv"
            with open(list_path, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["url", "label"])
                writer.writerows((url, f"class{i % LABELS}") for i, url in enumerate(urls))
            ceiling_s, how = run_ceiling(urls, in_flight, workers)
            imgclf_s, peak_mib, code = run_imgclf(list_path, Path(scratch) / f"out-{latency}")
            assert code == 0, f"download_data.py exited with {code}"
            naive_s = (
                None if args.skip_naive else run_naive(urls, Path(scratch) / f"naive-{latency}")
            )
            rows.append((latency, ceiling_s, how, imgclf_s, peak_mib, naive_s))
    n = args.images
    print()
    print("| latency | ceiling URLs/s | imgclf URLs/s | imgclf / ceiling | naive URLs/s |"
          " imgclf / naive | imgclf peak RSS |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for latency, ceiling_s, how, imgclf_s, peak_mib, naive_s in rows:
        naive = f"{n / naive_s:,.0f}" if naive_s else "-"
        versus_naive = f"{naive_s / imgclf_s:.2f}" if naive_s else "-"
        print(
            f"| {latency * 1000:.0f} ms | {n / ceiling_s:,.0f} ({how}) | {n / imgclf_s:,.0f} | "
            f"{ceiling_s / imgclf_s:.2f} | {naive} | {versus_naive} | {peak_mib:,.0f} MiB |"
        )


if __name__ == "__main__":
    main()
