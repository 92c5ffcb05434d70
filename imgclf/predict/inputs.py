"""What `--predict` was given: image files, folders of images, http(s) URLs → a flat list of items.

A path that does not exist or a folder without images becomes an item with an error, so it is
reported in line with the others and the rest still run. URLs are fetched with the downloader's
fetcher and limits (total deadline, byte cap, address guard); every image gets the downloader's
pixel cap before it is decoded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imgclf import USER_AGENT
from imgclf.acquire.fetcher import FetchOptions, fetch_once
from imgclf.acquire.reasons import REASONS
from imgclf.acquire.validator import ValidationOptions
from imgclf.dataset.samples import image_files
from imgclf.decoding import jpeg_frame
from imgclf.imaging import IMAGE_SUFFIXES, pixel_count

FETCH_TIMEOUT_S = 15.0
# Refuse bodies above this size: a classifier input is never this large, a wrong URL may be.
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
# The downloader's limit: larger images are refused before decoding.
MAX_PIXELS = ValidationOptions.max_pixels


@dataclass(frozen=True)
class Item:
    """One image to classify: `source` is a file path or URL; `label` a class index if known."""

    source: str
    label: int | None = None
    error: str | None = None


def is_url(text: str) -> bool:
    """True for http:// and https:// addresses."""
    return text.lower().startswith(("http://", "https://"))


def expand_inputs(arguments: Sequence[str]) -> list[Item]:
    """Items for files, URLs and (recursively, sorted) the images inside folders, in given order.

    Explicitly named files are kept whatever their extension (decoding decides); inside folders
    only image extensions are taken, so a README beside the images is not an error.
    """
    items: list[Item] = []
    for argument in arguments:
        path = Path(argument)
        if is_url(argument) or path.is_file():
            items.append(Item(argument))
        elif path.is_dir():
            images = image_files(path)
            if not images:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                items.append(Item(argument, error=f"folder has no images ({suffixes})"))
            items += [Item(str(image)) for image in images]
        else:
            items.append(Item(argument, error="no such file, folder or http(s) URL"))
    return items


def fetch_url(
    url: str,
    *,
    timeout: float = FETCH_TIMEOUT_S,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    block_private: bool = True,
) -> bytes:
    """GET `url` with the downloader's fetcher; raises OSError with a short reason on failure.

    `timeout` is a deadline for the whole request, body included (a body that trickles a byte
    at a time cannot stretch it), `max_bytes` holds while streaming, and with `block_private`
    only globally routable addresses are connected to (imgclf.acquire.addresses), also after
    redirects.
    """
    options = FetchOptions(
        concurrency=1,
        per_host=1,
        connect_timeout=min(timeout, FetchOptions.connect_timeout),
        timeout=timeout,
        retries=1,
        max_bytes=max_bytes,
        block_private=block_private,
        user_agent=USER_AGENT,
    )
    result = fetch_once(url, options)
    if result.body is None:
        raise OSError(_describe(result.reason, timeout, max_bytes))
    return result.body


def _describe(reason: str, timeout: float, max_bytes: int) -> str:
    if reason == "timeout":
        return f"no complete answer within {timeout:g} s"
    if reason == "too_large":
        return f"body exceeds {max_bytes} bytes"
    if reason == "blocked_private":
        return (
            "not a globally routable address (loopback, private, link-local, ...); "
            "pass --allow-private-urls to fetch it"
        )
    if reason.startswith("http_"):
        return f"HTTP {reason[5:]}"
    if reason == "connection":
        return "unreachable (the connection failed, or the host name did not resolve)"
    return f"{reason}: {REASONS.get(reason, reason)}"


def _header_pixels(data: bytes) -> int | None:
    """`pixel_count(data)`, for a JPEG read from its frame header without Pillow (a tenth of
    the time, which on a small photo was a third of its decoding cost: docs/benchmarks.md)."""
    frame = jpeg_frame(data)
    if frame is None or not frame[2] or not frame[3]:
        return pixel_count(data)
    pixels = frame[2] * frame[3]
    # Pillow's own bomb limit: pixel_count's sys.maxsize, so the message says the same.
    return sys.maxsize if pixels > 2 * (Image.MAX_IMAGE_PIXELS or sys.maxsize) else pixels


def read_item(item: Item, *, block_private: bool = True, max_pixels: int = MAX_PIXELS) -> bytes:
    """The raw bytes of an item's file or URL; raises OSError with a short reason.

    Files get the same byte cap as URLs, and both the downloader's pixel cap, read from the
    header before anything is decoded (a 144-megapixel PNG of a few KB decodes into GBs).
    """
    if is_url(item.source):
        data = fetch_url(item.source, block_private=block_private)
    else:
        path = Path(item.source)
        size = path.stat().st_size
        if size > MAX_DOWNLOAD_BYTES:
            raise OSError(f"file of {size} bytes exceeds {MAX_DOWNLOAD_BYTES} bytes")
        data = path.read_bytes()
    pixels = _header_pixels(data)
    if pixels is not None and pixels > max_pixels:
        shown = "beyond Pillow's limit" if pixels == sys.maxsize else f"{pixels:,}"
        raise OSError(
            f"image of {shown} pixels, above the limit of {max_pixels:,} "
            "(decoding it could exhaust memory)"
        )
    return data
