"""Downloader throughput against the fetch + decode ceiling and a naive threaded downloader.

Usage (heavy: run it alone, as the house rules ask):
    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/download.py
    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/download.py --images 2000 --latency 0
    flock /tmp/imgclf-cpu.lock nice .venv/bin/python benchmarks/download.py --ray \
        --img2dataset /tmp/i2d/bin/img2dataset --driver-memory 100000 1000000

A loopback server in its own process serves `--images` distinct small JPEGs (about 10-20 KB);
10 % of the URLs are faulty (404, truncated JPEG, HTML served as image/jpeg). Every response can
be delayed (`--latency`, seconds) to mimic the internet. For each latency it measures:

  ceiling     the least work any validating downloader must do: aiohttp GETs with as many
              requests in flight as the downloader's default, each body fully decoded with
              Pillow and hashed, no writes (best of: decode inline / in worker processes);
  imgclf      `utils/download_data.py` end to end: process start to exit, files + manifest;
  naive       what a user would write instead: 32 threads of urllib + PIL verify + write;
  ray         (--ray) `--distributor ray` end to end on a Ray cluster of this machine's cores,
              started before the run (a cluster is already up when a team uses one; its start
              time is printed apart), `--shard-size` 1,000;
  img2dataset (--img2dataset PATH) the tool teams use today, from its own venv: its defaults
              (resize to 256 px with a border, files output) with one process per core; at the
              first latency only (it is slow).

It prints URLs per second (every URL counts, faulty ones too), the ratio to the ceiling, and
the peak memory (RSS, main process + workers) of the imgclf run. `--driver-memory N ...` runs the
Ray distributor on lists of N rows (one in ten an image URL, most of them repeats of the
`--images` distinct ones, the rest `ftp://` URLs that fail without a request) and prints the
peak RSS of the driver process: flat memory means the same peak for 100,000 and 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import io
import itertools
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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
RAY_SHARD_SIZE = 1_000


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


def run_imgclf(list_path: Path, out: Path, *extra: str) -> tuple[float, float, int]:
    """(seconds from process start to exit, peak RSS MiB of the process tree, exit code)."""
    command = [sys.executable, str(ROOT / "utils/download_data.py")]
    command += ["--urls", str(list_path), "--out", str(out), "--quiet", *extra]
    return measure(command)


def measure(command: list[str]) -> tuple[float, float, int]:
    """Run `command`: (seconds, peak RSS MiB of its process tree, exit code)."""
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


@contextlib.contextmanager
def ray_cluster(cpus: int) -> Iterator[tuple[str, float]]:
    """A local Ray cluster on 127.0.0.1 for the run: (address, seconds it took to start)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # bind 127.0.0.1, not the LAN address
    import ray

    start = time.perf_counter()
    ray.init(
        address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING
    )
    try:
        yield ray.get_runtime_context().gcs_address, time.perf_counter() - start
    finally:
        ray.shutdown()


def run_ray(list_path: Path, out: Path, cpus: int) -> tuple[float, float, float, int]:
    """The Ray distributor: (seconds, peak RSS MiB of the driver, cluster start s, exit code)."""
    with ray_cluster(cpus) as (address, started):
        ray = ["--distributor", "ray", "--ray-address", address]
        seconds, peak, code = run_imgclf(list_path, out, *ray, "--shard-size", str(RAY_SHARD_SIZE))
    return seconds, peak, started, code


def run_img2dataset(program: str, list_path: Path, out: Path, processes: int) -> float:
    """img2dataset with its defaults, one process per core: seconds."""
    command = [program, "--url_list", str(list_path), "--input_format", "csv"]
    command += ["--url_col", "url", "--output_folder", str(out), "--processes_count"]
    command += [str(processes), "--output_format", "files", "--enable_wandb", "False"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def driver_memory(base_url: str, images: int, rows: int, scratch: Path, cpus: int) -> str:
    """One --driver-memory row: the Ray driver's peak RSS on a list of `rows` URLs."""
    list_path = scratch / f"memory-{rows}.csv"
    with open(list_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "label"])
        for i in range(rows):
            url = f"{base_url}/img/{i % images}.jpg?copy={i}" if i % 10 == 0 else f"ftp://x/{i}"
            writer.writerow((url, f"class{i % LABELS}"))
    with ray_cluster(cpus) as (address, _started):
        command = [sys.executable, str(ROOT / "utils/download_data.py"), "--urls", str(list_path)]
        command += ["--out", str(scratch / f"memory-out-{rows}"), "--quiet"]
        command += ["--distributor", "ray", "--ray-address", address]
        seconds, peak, code = measure(command)
    assert code == 0, f"download_data.py exited with {code}"
    speed = f"{seconds:,.0f} s | {rows / seconds:,.0f}"
    return f"| {rows:,} | {rows // 10:,} | {speed} | {peak:,.0f} MiB |"


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
    parser.add_argument("--ray", action="store_true", help="add the --distributor ray row")
    parser.add_argument("--img2dataset", metavar="PROGRAM", help="add an img2dataset row")
    parser.add_argument(
        "--driver-memory", type=int, nargs="*", default=[], metavar="ROWS", help="list sizes"
    )
    args = parser.parse_args()
    defaults = FetchOptions()
    in_flight = min(defaults.concurrency, defaults.per_host)
    workers = os.cpu_count() or 1
    print(
        f"{args.images:,} URLs ({sum(bool(fault_of(i)) for i in range(args.images)):,} faulty), "
        f"{in_flight} requests in flight, {workers} CPU cores, Python {sys.version.split()[0]}"
    )
    rows, extra, others = [], [], []
    n_third = args.images // 3
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
            if args.ray:
                # The marginal rate between a third of the list and all of it leaves out the
                # fixed costs (start, Ray's connect and worker start, the merge) of both.
                third = Path(scratch) / f"urls-{latency}-third.csv"
                with open(list_path) as whole, open(third, "w") as part:
                    part.writelines(itertools.islice(whole, n_third + 1))
                third_s = run_imgclf(third, Path(scratch) / f"third-{latency}")[0]
                ray_s, driver_mib, start_s, code = run_ray(
                    list_path, Path(scratch) / f"ray-{latency}", workers
                )
                assert code == 0, f"download_data.py --distributor ray exited with {code}"
                ray_third_s = run_ray(third, Path(scratch) / f"ray-third-{latency}", workers)[0]
                extra.append((latency, imgclf_s, third_s, ray_s, ray_third_s, driver_mib, start_s))
            if args.img2dataset and latency == args.latency[0]:  # a minute or two per row
                i2d_s = run_img2dataset(
                    args.img2dataset, list_path, Path(scratch) / f"i2d-{latency}", workers
                )
                others.append((latency, imgclf_s, i2d_s))
        memory = [
            driver_memory(base_url, args.images, n, Path(scratch), workers)
            for n in args.driver_memory
        ]
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
    if extra:
        print()
        print(f"end to end on {n:,} URLs; marginal: from {n_third:,} to {n:,} URLs")
        print("| latency | imgclf URLs/s | ray URLs/s | ray / imgclf | imgclf marginal |"
              " ray marginal | ray / imgclf marginal | ray driver peak RSS |"
              " cluster start |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for latency, imgclf_s, third_s, ray_s, ray_third_s, driver_mib, start_s in extra:
            imgclf_rate = (n - n_third) / (imgclf_s - third_s)
            ray_rate = (n - n_third) / (ray_s - ray_third_s)
            print(
                f"| {latency * 1000:.0f} ms | {n / imgclf_s:,.0f} | {n / ray_s:,.0f} | "
                f"{imgclf_s / ray_s:.2f} | {imgclf_rate:,.0f} | {ray_rate:,.0f} | "
                f"{ray_rate / imgclf_rate:.2f} | {driver_mib:,.0f} MiB | {start_s:.1f} s |"
            )
    if others:
        print()
        print("| latency | imgclf URLs/s | img2dataset URLs/s | imgclf / img2dataset |")
        print("| --- | --- | --- | --- |")
        for latency, imgclf_s, i2d_s in others:
            print(
                f"| {latency * 1000:.0f} ms | {n / imgclf_s:,.0f} | {n / i2d_s:,.0f} | "
                f"{i2d_s / imgclf_s:.2f} |"
            )
    if memory:
        print()
        print("| list rows | image URLs | ray run | rows/s | driver peak RSS |")
        print("| --- | --- | --- | --- | --- |")
        print("\n".join(memory))


if __name__ == "__main__":
    main()
