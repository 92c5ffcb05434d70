"""Command line of `utils/download_data.py`: parse options, run, print the summary, exit code."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from imgclf import USER_AGENT
from imgclf.acquire.addresses import parse_networks
from imgclf.acquire.fetcher import FetchOptions
from imgclf.acquire.layout import MANIFEST_NAME, STATS_NAME
from imgclf.acquire.pipeline import DownloadOptions, run_download
from imgclf.acquire.shards import DEFAULT_SHARD_SIZE
from imgclf.acquire.stats import format_summary
from imgclf.acquire.validator import ValidationOptions
from imgclf.commands import run_command
from imgclf.errors import EXIT_INTERRUPTED, EXIT_ITEM_FAILED, EXIT_OK, InputError

PROG = "download_data.py"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}

DESCRIPTION = """\
Download labelled image URLs, validate every image, and store it as <out>/<label>/<key>.<ext>
with <out>/manifest.csv (one row per URL: status ok / failed / duplicate and a reason word) and
<out>/download_stats.json. Input: a CSV/TSV with url,label[,split] columns, JSON Lines with the
same keys, or a folder of <label>.txt files (one URL per line); .gz variants too. Rerunning
skips URLs already stored intact and retries nothing else unless --retry-failed.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every option shows its default in --help."""
    defaults, checks = FetchOptions(), ValidationOptions()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_argument_group("input and output")
    source.add_argument(
        "--urls", type=Path, default=Path("data/urls"), help="URL list file or folder"
    )
    source.add_argument("--out", type=Path, default=Path("data/images"), help="output folder")
    source.add_argument(
        "--import",
        dest="import_from",
        type=Path,
        metavar="ARCHIVE_OR_FOLDER",
        help="bring in a zip/tar or folder of <label>/<image> files instead of downloading",
    )
    source.add_argument(
        "--retry-failed", action="store_true", help="fetch again URLs that failed before"
    )
    net = parser.add_argument_group("network")
    net.add_argument(
        "--concurrency", type=int, default=defaults.concurrency, help="requests in flight in total"
    )
    net.add_argument(
        "--per-host", type=int, default=defaults.per_host, help="connections to one host at a time"
    )
    net.add_argument(
        "--connect-timeout",
        type=float,
        default=defaults.connect_timeout,
        help="seconds to establish a connection",
    )
    net.add_argument(
        "--timeout",
        type=float,
        default=defaults.timeout,
        help="seconds for a whole request, body included",
    )
    net.add_argument(
        "--retries",
        type=int,
        default=defaults.retries,
        help="extra attempts after network errors, timeouts, 429, 5xx",
    )
    net.add_argument(
        "--retry-delay",
        type=float,
        default=defaults.retry_delay,
        help="first backoff (s), doubled per attempt, plus jitter",
    )
    net.add_argument(
        "--max-retry-wait",
        type=float,
        default=defaults.max_retry_wait,
        help="longest wait before a retry, Retry-After included",
    )
    net.add_argument(
        "--max-bytes",
        type=_byte_size,
        default=defaults.max_bytes,
        help="largest body accepted (bytes; K/M/G suffixes allowed)",
    )
    net.add_argument("--user-agent", default=defaults.user_agent, help="User-Agent header")
    net.add_argument(
        "--ignore-opt-out",
        action="store_true",
        help="download even when X-Robots-Tag says noai / noimageai",
    )
    net.add_argument(
        "--block-private",
        action="store_true",
        help="connect only to globally routable addresses: no loopback, private, CGNAT, "
        "link-local, multicast or reserved ones, also after redirects (use for untrusted lists)",
    )
    net.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="with --block-private, still allow this network (an internal mirror); repeatable",
    )
    image = parser.add_argument_group("images")
    image.add_argument(
        "--max-pixels",
        type=int,
        default=checks.max_pixels,
        help="refuse larger width x height before decoding (bombs)",
    )
    image.add_argument(
        "--min-side",
        type=int,
        default=checks.min_side,
        help="refuse images whose shorter side is smaller",
    )
    image.add_argument(
        "--resize",
        type=int,
        default=None,
        metavar="N",
        help="re-encode as JPEG with the longer side <= N; None keeps the original bytes",
    )
    image.add_argument(
        "--validate-timeout",
        type=float,
        default=checks.timeout,
        metavar="SECONDS",
        help="time one image may take to validate before its worker is replaced and the image "
        "recorded as validate_timeout; 0: no limit (default: %(default)s)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="validation worker processes (default: one per core; with --distributor ray: "
        "1, which validates in each shard runner's own process)",
    )
    run.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (also off without a TTY), one-line summary",
    )
    cluster = parser.add_argument_group("cluster (see docs/download.md)")
    cluster.add_argument(
        "--distributor",
        choices=("local", "ray"),
        default="local",
        help="local: this machine; ray: shards of the list on a Ray cluster, one runner per CPU",
    )
    cluster.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (host:port or auto); default: start one on this machine",
    )
    cluster.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="rows per shard (a runner commits each shard on its own)",
    )
    cluster.add_argument(
        "--max-shard-retries",
        type=int,
        default=3,
        help="runs of a shard after its task failed or its worker died",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> DownloadOptions:
    """DownloadOptions from parsed arguments; InputError for values out of range."""
    if args.ray_address is not None and args.distributor != "ray":
        raise InputError("--ray-address is for --distributor ray; add it or drop the address.")
    if args.workers is None:
        args.workers = 1 if args.distributor == "ray" else os.cpu_count() or 1
    for name in ("concurrency", "per_host", "workers", "max_pixels", "max_bytes", "shard_size"):
        _require(getattr(args, name) >= 1, name, "at least 1")
    for name in ("connect_timeout", "timeout"):
        _require(getattr(args, name) > 0, name, "greater than 0")
    for name in (
        "retries",
        "retry_delay",
        "max_retry_wait",
        "min_side",
        "max_shard_retries",
        "validate_timeout",
    ):
        _require(getattr(args, name) >= 0, name, "0 or more")
    if args.resize is not None:
        _require(args.resize >= 1, "resize", "at least 1")
    try:
        parse_networks(args.allow_network)
    except ValueError as error:
        raise InputError(f"--allow-network: {error}; pass a network like 10.1.0.0/16.") from None
    fetch = FetchOptions(
        concurrency=args.concurrency,
        per_host=args.per_host,
        connect_timeout=args.connect_timeout,
        timeout=args.timeout,
        retries=args.retries,
        retry_delay=args.retry_delay,
        max_retry_wait=args.max_retry_wait,
        max_bytes=args.max_bytes,
        honour_opt_out=not args.ignore_opt_out,
        block_private=args.block_private,
        allowed_networks=tuple(args.allow_network),
        user_agent=args.user_agent or USER_AGENT,
    )
    validation = ValidationOptions(
        args.max_pixels, args.min_side, args.resize, timeout=args.validate_timeout
    )
    return DownloadOptions(
        out=args.out,
        urls=None if args.import_from else args.urls,
        import_from=args.import_from,
        fetch=fetch,
        validation=validation,
        retry_failed=args.retry_failed,
        workers=args.workers,
        progress=not args.quiet and sys.stderr.isatty(),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the downloader; returns 0 (done), 2 (bad argument or input) or 130 (interrupted)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _download(args), prog=PROG)


def _download(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    if args.distributor == "ray":
        from imgclf.acquire import distributed  # imports Ray: only when asked for

        ray_options = distributed.RayOptions(
            args.ray_address, args.shard_size, args.max_shard_retries
        )
        try:
            stats = distributed.run_distributed(options, ray_options)
        except distributed.ShardsFailed as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return EXIT_ITEM_FAILED
    else:
        stats = run_download(options)
    summary = format_summary(stats, options.out)
    print(summary.splitlines()[0] if args.quiet else summary)
    if not args.quiet:
        print(f"\nManifest: {options.out / MANIFEST_NAME}   stats: {options.out / STATS_NAME}")
    return EXIT_INTERRUPTED if stats.interrupted else EXIT_OK


def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise InputError(f"--{name.replace('_', '-')} must be {what}; pass a valid value.")


def _byte_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 20971520, 512K or 20MiB")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _UNITS[unit])
