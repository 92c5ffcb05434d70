"""Image URLs of a /predict JSON body → bytes, with the downloader's safeguards (--allow-urls).

The fetch is the downloader's own `Fetcher`: http/https only (also after each redirect), a byte
cap, a total timeout, and private, loopback and link-local addresses refused on every hop
(`blocked_private`) unless the service was started with --allow-private-urls. One attempt per
URL: the request has a deadline, retries belong to the client.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from imgclf.acquire.fetcher import Fetcher, FetchOptions
from imgclf.serve.settings import ServiceSettings


@dataclass(frozen=True)
class Fetched:
    """The body of one URL, or the downloader's reason word; with the time it took."""

    body: bytes | None
    reason: str
    read_ms: float


def url_fetcher(settings: ServiceSettings) -> Fetcher:
    """The service's fetcher (enter it with `async with` for the session's lifetime)."""
    options = FetchOptions(
        concurrency=32,
        per_host=8,
        connect_timeout=min(5.0, settings.url_timeout_s),
        timeout=settings.url_timeout_s,
        retries=0,
        max_bytes=settings.max_body_bytes,
        block_private=not settings.allow_private_urls,
    )
    return Fetcher(options)


async def fetch_all(fetcher: Fetcher, urls: list[str]) -> list[Fetched]:
    """Fetch every URL concurrently; failures are results, never exceptions."""

    async def one(url: str) -> Fetched:
        start = time.perf_counter()
        result = await fetcher.fetch(url)
        return Fetched(result.body, result.reason, (time.perf_counter() - start) * 1e3)

    return list(await asyncio.gather(*(one(url) for url in urls)))
