"""Fetch URLs politely and defensively: one aiohttp session, limits, retries, a byte cap.

- connection reuse with a global (`concurrency`) and a per-host (`per_host`) connection limit;
- connect and total timeouts per attempt; only http/https, also after each redirect;
- redirects followed by hand (at most `max_redirects`): aiohttp's own `max_redirects=N` follows
  only N-1, and doing it here re-checks the scheme on every hop;
- `--block-private`: only globally routable addresses are connected to, vetted by the
  connector's own resolver (imgclf.acquire.addresses) on every request and hop, so a name that
  answers differently the second time (DNS rebinding) cannot reach an internal address;
- retries with exponential backoff and jitter for retryable failures only (connection errors,
  timeouts, a body cut short, 429, 5xx), waiting at least what `Retry-After` asks;
- bodies streamed with a cap (`max_bytes`); over the cap or cut short is rejected, never kept;
- `X-Robots-Tag: noai` / `noimageai` honoured (`opted_out`) unless `honour_opt_out` is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from imgclf import USER_AGENT, USER_AGENT_TOKEN
from imgclf.acquire import addresses
from imgclf.acquire.reader import MAX_URL_LENGTH, URL_TOO_LONG
from imgclf.acquire.reasons import http_reason, is_retryable

OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
# Directives written `name: value`; a leading one is not a bot name.
_DIRECTIVES_WITH_VALUE = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)
_BOT_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SCHEMES = frozenset({"http", "https"})
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchOptions:
    """Network behaviour; the CLI exposes every field."""

    concurrency: int = 128
    per_host: int = 64
    connect_timeout: float = 10.0
    timeout: float = 30.0
    retries: int = 2
    retry_delay: float = 0.5
    max_retry_wait: float = 60.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    honour_opt_out: bool = True
    block_private: bool = False
    allowed_networks: tuple[str, ...] = ()  # with block_private: still reachable (CIDR)
    user_agent: str = USER_AGENT


@dataclass(frozen=True)
class FetchResult:
    """`body` when the fetch worked, else a reason word; `attempts` counts requests tried."""

    body: bytes | None
    reason: str
    attempts: int


class _Failure(Exception):
    """One attempt failed with `reason`; `retry_after` is the server's wish in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Fetcher:
    """Async context manager owning the HTTP session; `await fetch(url)` never raises."""

    def __init__(self, options: FetchOptions, *, lookup: AbstractResolver | None = None) -> None:
        """`lookup` replaces the system's DNS resolution (tests; the guard still applies)."""
        self.options = options
        self._lookup = lookup
        self._allowed = addresses.parse_networks(options.allowed_networks)
        self._session: aiohttp.ClientSession | None = None
        self._hosts = HostSlots(options.per_host)

    async def __aenter__(self) -> Fetcher:
        connector = addresses.connector(
            block_private=self.options.block_private,
            allowed=self._allowed,
            lookup=self._lookup,
            limit=self.options.concurrency,
            ttl_dns_cache=300,
        )
        timeout = aiohttp.ClientTimeout(
            total=self.options.timeout, sock_connect=self.options.connect_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": self.options.user_agent},
            # Cookies from one image host are of no use for the next request; skip the jar.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str) -> FetchResult:
        """Download `url` with retries; returns the body or the reason of the last failure."""
        reason = check_url(url)
        if reason:
            return FetchResult(None, reason, 0)
        attempt = 0
        while True:
            attempt += 1
            try:
                return FetchResult(await self._attempt(URL(url, encoded=False)), "", attempt)
            except _Failure as failure:
                if not is_retryable(failure.reason) or attempt > self.options.retries:
                    return FetchResult(None, failure.reason, attempt)
                await asyncio.sleep(self._backoff(attempt, failure.retry_after))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = self.options.retry_delay * 2 ** (attempt - 1)
        # Jitter spreads the retries of many failed requests so they do not return as one burst.
        delay = base + random.uniform(0, self.options.retry_delay)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.options.max_retry_wait)

    async def _attempt(self, url: URL) -> bytes:
        assert self._session is not None, "use `async with Fetcher(...)`"
        for _hop in range(self.options.max_redirects + 1):
            if url.scheme not in SCHEMES:
                raise _Failure("unsupported_scheme")
            if not url.host:
                raise _Failure("invalid_url")
            if self.options.block_private:
                try:
                    # IP literals: the connector's resolver never sees them.
                    addresses.check_host(url.host, self._allowed)
                except addresses.BlockedAddressError:
                    raise _Failure("blocked_private") from None
            try:
                async with (
                    self._hosts.slot(url.host),
                    self._session.get(url, allow_redirects=False) as response,
                ):
                    if response.status in REDIRECT_STATUSES:
                        location = response.headers.get("Location")
                        if not location:
                            raise _Failure(http_reason(response.status))
                        url = url.join(URL(location))
                        continue
                    return await self._read(response)
            except _Failure:
                raise
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                raise _Failure("timeout") from None
            except aiohttp.ClientPayloadError:
                raise _Failure("incomplete") from None
            except aiohttp.ClientResponseError:
                # aiohttp's parser refused the response: bad status line or headers, or more
                # bytes than Content-Length announced. A broken server stays broken: no retry.
                raise _Failure("bad_response") from None
            except (aiohttp.InvalidURL, ValueError):
                raise _Failure("invalid_url") from None
            except (aiohttp.ClientError, OSError) as error:
                if addresses.blocked_by_guard(error):
                    raise _Failure("blocked_private") from None
                raise _Failure("connection") from None
        raise _Failure("too_many_redirects")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        if not 200 <= response.status < 300:
            raise _Failure(http_reason(response.status), retry_after_seconds(response.headers))
        if self.options.honour_opt_out and opted_out(response.headers.getall("X-Robots-Tag", [])):
            raise _Failure("opted_out")
        limit = self.options.max_bytes
        announced = response.content_length
        if announced is not None and announced > limit:
            raise _Failure("too_large")
        if announced is not None and "Content-Encoding" not in response.headers:
            # The length is known and within the cap: one read, no chunk bookkeeping.
            return await response.read()
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise _Failure("too_large")
            chunks.append(chunk)
        return b"".join(chunks)


class HostSlots:
    """At most `limit` requests per host at a time.

    aiohttp's own `limit_per_host` makes a request wait for a connection *inside* its total
    timeout, so requests queued behind a slow host would time out without ever being sent.
    Waiting here happens before the timeout starts. Idle hosts are forgotten (flat memory).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._hosts: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Hold one of `host`'s slots for the duration of the block."""
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts[host] = (asyncio.Semaphore(self.limit), [0])
        semaphore, users = entry
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._hosts[host]

    def __len__(self) -> int:
        return len(self._hosts)


def fetch_once(url: str, options: FetchOptions) -> FetchResult:
    """Fetch one URL from synchronous code with every limit of the downloader.

    The total deadline per attempt (`timeout`, which a body trickling a byte at a time cannot
    stretch), the byte cap, redirects, retries and `block_private` all apply. Must not be
    called from a running event loop (use `Fetcher` there).
    """

    async def run() -> FetchResult:
        async with Fetcher(options) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(run())


def check_url(url: str) -> str:
    """'' when `url` looks fetchable, else `url_too_long`, `invalid_url`, `unsupported_scheme`."""
    if len(url) > MAX_URL_LENGTH:
        return URL_TOO_LONG
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "invalid_url"
    if not parsed.scheme or (parsed.scheme in SCHEMES and not parsed.host):
        return "invalid_url"
    if parsed.scheme not in SCHEMES:
        return "unsupported_scheme"
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        return "invalid_url"
    return ""


def opted_out(values: list[str], token: str = USER_AGENT_TOKEN) -> bool:
    """True if an X-Robots-Tag value forbids AI use for every bot or for `token`.

    A value is `directive, directive` or `bot: directive, directive`; a bot name applies to the
    directives after it up to the next bot name. Proxies may fold several header lines into one
    field joined by commas (`googlebot: noindex, imgclf: noai`), so one value can name several
    bots: each part is read on its own. Only directives for every bot or for `token` count.
    """
    for value in values:
        bot = ""  # directives before any bot name are for every bot
        for part in value.split(","):
            head, colon, tail = part.partition(":")
            name = head.strip().lower()
            if colon and _BOT_NAME.fullmatch(name) and name not in _DIRECTIVES_WITH_VALUE:
                bot, part = name, tail
            directive = part.partition(":")[0].strip().lower()
            if directive in OPT_OUT_DIRECTIVES and bot in ("", token):
                return True
    return False


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` as seconds from now (delta-seconds or an HTTP date), or None."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
