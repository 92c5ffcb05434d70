"""Which network addresses a fetch may reach: the one guard behind `--block-private`.

Only globally routable unicast addresses pass. Python's `ipaddress.is_global` alone is not enough
(in 3.11 it calls multicast, 192.0.0.0/24, NAT64 and 6to4 forms of 127.0.0.1 global), so the
special-purpose ranges of the IANA registries are listed here explicitly, and an IPv6 address that
carries an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) is judged by the IPv4 address it
reaches.

The check must hold for the address that is really connected to, not for an earlier lookup of the
same name (DNS rebinding: a name can answer a public address to the check and 127.0.0.1 to the
connect). `PublicAddressResolver` is therefore the resolver of the aiohttp connector itself: the
addresses it returns are the only ones the connection can use, on every request and redirect.
aiohttp skips the resolver for IP literals, so `check_host` vets those (they cannot rebind).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv4 ranges that are not globally reachable (RFC 6890 and the IANA special-purpose registry),
# plus multicast and the reserved 240/4 (which holds the limited broadcast address).
NON_GLOBAL_IPV4 = tuple(
    ipaddress.IPv4Network(network)
    for network in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT; cloud metadata services live here too
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, e.g. 169.254.169.254 metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
    )
)
GLOBAL_UNICAST_IPV6 = ipaddress.IPv6Network("2000::/3")
NON_GLOBAL_IPV6 = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "2001::/23",  # IETF protocol assignments, Teredo (2001::/32) included
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 segment identifiers
    )
)
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: reaches the embedded IPv4
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


class BlockedAddressError(OSError):
    """`host` resolves only to addresses that are not globally routable.

    An OSError, so aiohttp reports it as a connection failure (`ClientConnectorError.os_error`)
    without any connection having been attempted.
    """

    def __init__(self, host: str, addresses: Iterable[str] = ()) -> None:
        self.host = host
        self.addresses = tuple(addresses)
        shown = ", ".join(self.addresses) or host
        super().__init__(f"{host}: not a globally routable address ({shown})")


def is_public_address(address: IPAddress | str) -> bool:
    """True only for a globally routable unicast address (IPv4 or IPv6)."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address)
        except ValueError:
            return False
    if isinstance(address, ipaddress.IPv6Address):
        return _is_public_ipv6(address)
    if any(address in network for network in NON_GLOBAL_IPV4):
        return False
    return address.is_global and not address.is_multicast


def _is_public_ipv6(address: ipaddress.IPv6Address) -> bool:
    address = ipaddress.IPv6Address(address.packed)  # drop a %scope: it changes nothing here
    if address in IPV4_MAPPED or address in NAT64:
        return is_public_address(ipaddress.IPv4Address(address.packed[-4:]))
    if address not in GLOBAL_UNICAST_IPV6 or any(address in net for net in NON_GLOBAL_IPV6):
        return False
    if address in SIX_TO_FOUR:
        return is_public_address(ipaddress.IPv4Address(address.packed[2:6]))
    return address.is_global and not address.is_multicast


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (`10.1.0.0/16`, `fd00::/8`, a bare address) as networks; ValueError if bad."""
    return tuple(ipaddress.ip_network(text.strip(), strict=False) for text in texts)


def permitted(address: IPAddress | str, allowed: tuple[IPNetwork, ...] = ()) -> bool:
    """True for a public address, or one inside a network the user explicitly allowed."""
    if allowed:
        parsed = parse_ip_literal(address) if isinstance(address, str) else address
        if parsed is not None and any(_within(parsed, network) for network in allowed):
            return True
    return is_public_address(address)


def _within(address: IPAddress, network: IPNetwork) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or ipaddress.IPv6Address(address.packed)
    return address.version == network.version and address in network


def parse_ip_literal(host: str) -> IPAddress | None:
    """`host` as an address when it is an IP literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def looks_numeric(host: str) -> bool:
    """True for hosts that some resolvers read as numbers (`2130706433`, `0x7f.1`, `127.1`).

    They are not canonical addresses, yet `inet_aton` turns them into 127.0.0.1; refuse them
    rather than guess which reading the connection would use.
    """
    parts = host.rstrip(".").split(".")
    return all(part.isdigit() or part.lower().startswith("0x") for part in parts if part)


def check_host(host: str, allowed: tuple[IPNetwork, ...] = ()) -> None:
    """Raise BlockedAddressError for an IP-literal (or numeric-looking) host that is not public.

    Host names pass here: `PublicAddressResolver` vets what they resolve to at connect time.
    """
    address = parse_ip_literal(host)
    if address is not None:
        if not permitted(address, allowed):
            raise BlockedAddressError(host, [str(address)])
    elif looks_numeric(host):
        raise BlockedAddressError(host)


class PublicAddressResolver(ThreadedResolver):
    """aiohttp resolver that returns only globally routable addresses.

    `lookup` answers the DNS question (default: the system resolver through a thread, as
    aiohttp's own `ThreadedResolver`); the answers that are not public (nor in `allowed`) are
    dropped, and when none is left `BlockedAddressError` is raised: nothing is connected to.
    """

    def __init__(
        self, lookup: AbstractResolver | None = None, allowed: tuple[IPNetwork, ...] = ()
    ) -> None:
        super().__init__()
        self._lookup = lookup
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._lookup is not None:
            answers = await self._lookup.resolve(host, port, family)
        else:
            answers = await super().resolve(host, port, family)
        public = [answer for answer in answers if permitted(answer["host"], self._allowed)]
        if not public:
            raise BlockedAddressError(host, [answer["host"] for answer in answers])
        return public

    async def close(self) -> None:
        if self._lookup is not None:
            await self._lookup.close()


def connector(
    *,
    block_private: bool,
    allowed: tuple[IPNetwork, ...] = (),
    lookup: AbstractResolver | None = None,
    **options: Any,
) -> aiohttp.TCPConnector:
    """A TCPConnector; with `block_private` its resolver lets only public addresses through.

    Every HTTP client of the project that fetches untrusted URLs builds its connector here
    (together with `check_host` for IP literals), so the guard is one piece of code.
    """
    if block_private:
        options["resolver"] = PublicAddressResolver(lookup, allowed)
    elif lookup is not None:
        options["resolver"] = lookup
    return aiohttp.TCPConnector(**options)


def blocked_by_guard(error: BaseException) -> bool:
    """True when aiohttp's connection error `error` comes from this guard."""
    return isinstance(getattr(error, "os_error", None), BlockedAddressError) or isinstance(
        error.__cause__, BlockedAddressError
    )
