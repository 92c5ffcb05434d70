"""--block-private: only globally routable addresses are ever connected to.

The "public" addresses below are never connected to: every test either expects a refusal before
any connection, or lets the connection go to a real server on 127.0.0.1 whose hit counter shows
whether a request arrived. Name resolution is injected (a `lookup` resolver), never real DNS.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from imgclf.acquire import addresses
from imgclf.acquire.fetcher import Fetcher, FetchOptions, fetch_once
from imgclf.commands.download import main
from tests.acquire import sample_images as images
from tests.acquire.faults import read_rows, write_list
from tests.support.loopback import LoopbackServer, respond

NEVER_CONNECTED = "93.184.216.34"  # public; the guard passes it, no test connects to it

NOT_GLOBAL = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "100.64.0.1",
    "100.100.100.200",  # a cloud metadata endpoint in carrier-grade NAT space
    "100.127.255.255",
    "169.254.169.254",
    "172.16.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:100.100.100.200",
    "::ffff:0:7f00:1",  # IPv4-translated
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::1",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:db8::1",
    "3fff::1",
    "100::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",  # global-scope multicast: is_global says True in Python 3.11
]
GLOBAL = [
    NEVER_CONNECTED,
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize("address", NOT_GLOBAL)
def test_addresses_that_are_not_globally_routable_are_refused(address):
    assert not addresses.is_public_address(address)


@pytest.mark.parametrize("address", GLOBAL)
def test_globally_routable_addresses_pass(address):
    assert addresses.is_public_address(address)


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f000001", "0x7f.1", "127.1", "0177.0.0.1", "[::ffff:7f00:1]"]
)
def test_numeric_host_spellings_of_loopback_are_refused(host):
    with pytest.raises(addresses.BlockedAddressError):
        addresses.check_host(host)


class ScriptedLookup(AbstractResolver):
    """DNS stand-in: answer `answers[name][n]` on the n-th question (the last one repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.questions: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.questions.append(host)
        script = self.answers[host]
        hosts = script[min(len(self.questions) - 1, len(script) - 1)]
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in hosts
        ]

    async def close(self) -> None:
        pass


async def resolve(lookup: AbstractResolver, host: str):
    return await addresses.PublicAddressResolver(lookup).resolve(host, 80)


def fetch(url: str, lookup: AbstractResolver, **options):
    async def run():
        settings = FetchOptions(block_private=True, retries=0, **options)
        async with Fetcher(settings, lookup=lookup) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(run())


@pytest.fixture
def image_server():
    with LoopbackServer({"/secret.jpg": respond(images.jpeg(seed=1))}) as server:
        yield server


def test_a_rebinding_name_never_reaches_loopback(image_server):
    # The name answers a public address first and 127.0.0.1 after. A check that resolves the
    # name itself and lets the connection resolve it again is fooled; here the first answer is
    # what any such earlier check saw, and the connector's own question gets 127.0.0.1.
    lookup = ScriptedLookup({"rebind.test": [[NEVER_CONNECTED], ["127.0.0.1"]]})
    first = asyncio.run(resolve(lookup, "rebind.test"))
    assert [answer["host"] for answer in first] == [NEVER_CONNECTED]

    result = fetch(f"http://rebind.test:{image_server.port}/secret.jpg", lookup)
    assert (result.body, result.reason) == (None, "blocked_private")
    assert lookup.questions == ["rebind.test", "rebind.test"]  # no separate vetting lookup
    assert image_server.hits["/secret.jpg"] == 0


def test_only_the_public_answers_of_a_name_are_kept():
    lookup = ScriptedLookup({"mixed.test": [["127.0.0.1", NEVER_CONNECTED, "10.0.0.1"]]})
    answers = asyncio.run(resolve(lookup, "mixed.test"))
    assert [answer["host"] for answer in answers] == [NEVER_CONNECTED]


@pytest.mark.parametrize(
    "target",
    [
        "http://100.100.100.200/latest/meta-data/",
        "http://[::ffff:100.100.100.200]/latest/",
        "http://[64:ff9b::6464:64c8]/latest/",
        "http://169.254.169.254/",
        "http://metadata.test/computeMetadata/",  # a name that resolves to CGNAT space
        "http://2130706433/",
    ],
)
def test_redirects_to_internal_addresses_are_refused_on_every_hop(target):
    lookup = ScriptedLookup({"metadata.test": [["100.100.100.200"]]})
    routes = {"/start": respond(status=302, headers={"Location": target})}
    with LoopbackServer(routes) as server:
        # The origin (the loopback test server) is allowed explicitly; its redirect is not.
        result = fetch(server.url("/start"), lookup, allowed_networks=("127.0.0.1/32",))
        assert server.hits["/start"] == 1
    assert (result.body, result.reason) == (None, "blocked_private")


def test_the_cli_refuses_cgnat_and_loopback_spellings_directly_and_through_redirects(tmp_path):
    with LoopbackServer({"/secret.jpg": respond(images.jpeg(seed=2))}) as secret:
        mapped = f"http://[::ffff:127.0.0.1]:{secret.port}/secret.jpg"
        routes = {
            "/to-cgnat": respond(status=302, headers={"Location": "http://100.100.100.200/"}),
            "/to-mapped": respond(status=302, headers={"Location": mapped}),
            "/ok.jpg": respond(images.jpeg(seed=3)),
        }
        with LoopbackServer(routes) as origin:
            rows = [
                ("http://100.100.100.200/latest/meta-data/", "x"),
                (mapped, "x"),
                (f"http://[64:ff9b::7f00:1]:{secret.port}/secret.jpg", "x"),
                (f"http://0x7f.1:{secret.port}/secret.jpg", "x"),
                (origin.url("/to-mapped"), "x"),
            ]
            urls = write_list(tmp_path / "urls.csv", rows)
            out = tmp_path / "out"
            assert main(["--urls", str(urls), "--out", str(out), "--quiet", "--retries", "0",
                         "--block-private"]) == 0  # fmt: skip
            assert secret.hits["/secret.jpg"] == 0 and origin.hits["/to-mapped"] == 0
            assert [row["reason"] for row in read_rows(out)] == ["blocked_private"] * 5

            # An explicitly allowed origin is fetched; its redirect into CGNAT space is not.
            rows = [(origin.url("/to-cgnat"), "x"), (origin.url("/ok.jpg"), "x")]
            urls = write_list(tmp_path / "urls2.csv", rows)
            out = tmp_path / "out2"
            assert main(["--urls", str(urls), "--out", str(out), "--quiet", "--retries", "0",
                         "--block-private", "--allow-network", "127.0.0.1/32"]) == 0  # fmt: skip
            assert origin.hits["/to-cgnat"] == 1
    assert [row["reason"] for row in read_rows(out)] == ["blocked_private", ""]


def test_a_bad_allow_network_is_an_input_error(tmp_path, capsys):
    urls = write_list(tmp_path / "urls.csv", [("http://example.test/a.jpg", "x")])
    code = main(["--urls", str(urls), "--out", str(tmp_path / "o"), "--allow-network", "10.0/x"])
    assert code == 2
    assert "--allow-network" in capsys.readouterr().err


def test_fetch_once_has_a_total_deadline_a_byte_cap_and_the_guard():
    async def trickle(request):
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        for _ in range(1000):  # a byte every 0.2 s: every read is quick, the body never ends
            await response.write(b"\xff")
            await asyncio.sleep(0.2)
        return response

    routes = {"/trickle.jpg": trickle, "/big.jpg": respond(b"\xff" * 300_000)}
    with LoopbackServer(routes) as server:
        quick = FetchOptions(timeout=1, retries=0, max_bytes=100_000)
        assert fetch_once(server.url("/trickle.jpg"), quick).reason == "timeout"
        assert fetch_once(server.url("/big.jpg"), quick).reason == "too_large"
        guarded = FetchOptions(retries=0, block_private=True)
        assert fetch_once(server.url("/big.jpg"), guarded).reason == "blocked_private"
        assert server.hits["/big.jpg"] == 1
