"""Every fault of the issue against a real loopback server: each ends in its documented row."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from aiohttp import web

from imgclf import __version__
from imgclf.acquire.manifest import COLUMNS
from imgclf.acquire.reasons import is_known_reason
from imgclf.commands.download import main
from tests.acquire import sample_images as images
from tests.acquire.faults import (
    EXPECTED,
    FAST,
    RETRY_AFTER_SECONDS,
    USER_AGENTS,
    full_url,
    read_rows,
    write_list,
)
from tests.support.loopback import LoopbackServer


@pytest.fixture(scope="module")
def fault_run(fault_server, tmp_path_factory):
    """One download over every fault case: (exit code, out folder, rows by URL, rows in order)."""
    base = tmp_path_factory.mktemp("faults")
    rows = [(full_url(fault_server, key), label) for key, (label, _, _) in EXPECTED.items()]
    urls = write_list(base / "urls.csv", rows)
    out = base / "out"
    code = main(["--urls", str(urls), "--out", str(out), "--quiet", *FAST])
    ordered = read_rows(out)
    return code, out, {row["url"]: row for row in ordered}, ordered


def row_of(fault_run, fault_server, key):
    return fault_run[2][full_url(fault_server, key)]


def test_run_completes_with_one_row_per_url_in_input_order(fault_run, fault_server):
    code, out, _, ordered = fault_run
    assert code == 0
    assert [row["url"] for row in ordered] == [full_url(fault_server, key) for key in EXPECTED]
    header = (out / "manifest.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(COLUMNS)


@pytest.mark.parametrize("key", list(EXPECTED))
def test_each_case_ends_in_its_documented_status_and_reason(fault_run, fault_server, key):
    row = row_of(fault_run, fault_server, key)
    label, status, reason = EXPECTED[key]
    assert (row["label"], row["status"], row["reason"]) == (label, status, reason)
    assert reason == "" or is_known_reason(reason)


@pytest.mark.parametrize(
    ("key", "attempts"),
    [
        ("/ok.jpg", 1),
        ("/missing.jpg", 1),  # 4xx: no retry
        ("/forbidden.jpg", 1),
        ("/flaky.jpg", 2),  # 500 then 200
        ("/rate-limited.jpg", 2),  # 429 then 200
        ("/always500.jpg", 2),  # --retries 1: two attempts in all
        ("/slow.jpg", 2),
        ("/cut.jpg", 2),
        ("/longer.jpg", 1),
        ("/html.jpg", 1),
        ("ftp://{host}/file.jpg", 0),  # refused before any request
    ],
)
def test_attempts_count_retries_of_retryable_failures_only(fault_run, fault_server, key, attempts):
    assert int(row_of(fault_run, fault_server, key)["attempts"]) == attempts


def test_retry_after_is_honoured(fault_run, fault_server):
    calls = fault_server.routes["/rate-limited.jpg"].calls
    assert len(calls) == 2
    # --retry-delay is 0.01 s: only Retry-After can explain a gap this long.
    assert calls[1] - calls[0] >= RETRY_AFTER_SECONDS * 0.95


def test_accepted_files_hold_the_original_bytes_named_by_detected_format(fault_run, fault_server):
    _, out, by_url, _ = fault_run
    for row in by_url.values():
        if row["status"] != "ok":
            assert row["path"] == ""
            continue
        data = (out / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert len(data) == int(row["bytes"])
        assert not Path(row["path"]).is_absolute()
    served = {
        "/webp-named.jpg": "webp",  # the URL says .jpg, the bytes say WebP
        "/photo.webp": "webp",
        "/animated.gif": "gif",
        "/picture.bmp": "bmp",
        "/scan.tiff": "tiff",
        "/deep.png": "png",
        "/cmyk.jpg": "jpg",
    }
    for key, ext in served.items():
        assert row_of(fault_run, fault_server, key)["path"].endswith(f".{ext}")


def test_redirects_are_followed_up_to_five(fault_run, fault_server):
    # aiohttp's own max_redirects=5 would stop after four: the fetcher follows them itself.
    assert row_of(fault_run, fault_server, "/five0")["status"] == "ok"
    assert row_of(fault_run, fault_server, "/six0")["reason"] == "too_many_redirects"
    assert fault_server.hits["/five4"] == 1 and fault_server.hits["/six5"] == 1


def test_exif_rotated_image_reports_its_upright_size(fault_run, fault_server):
    row = row_of(fault_run, fault_server, "/rotated.jpg")
    assert (int(row["width"]), int(row["height"])) == (48, 64)


def test_same_bytes_are_stored_once_and_a_label_conflict_is_reported(fault_run, fault_server):
    _, out, _, _ = fault_run
    first = row_of(fault_run, fault_server, "/same-1.jpg")
    for key in ("/same-2.jpg", "/same-3.jpg"):
        row = row_of(fault_run, fault_server, key)
        assert row["duplicate_of"] == first["url"]
        assert row["sha256"] == first["sha256"]
    stored = [p for p in out.rglob("*") if p.is_file() and p.parent != out]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in stored]
    assert digests.count(first["sha256"]) == 1
    stats = json.loads((out / "download_stats.json").read_text())
    assert stats["label_conflicts"] == 1  # same-3 is a dog, same-1 a cat
    assert stats["label_conflict_examples"][0]["kept_label"] == "cat"


def test_a_hostile_label_stays_inside_the_output_folder(fault_run, fault_server):
    _, out, _, _ = fault_run
    row = row_of(fault_run, fault_server, "/evil-label.jpg")
    assert row["label"] == "../evil"
    assert row["path"].startswith("_evil/")
    assert (out / row["path"]).resolve().is_relative_to(out.resolve())


def test_nothing_temporary_or_empty_is_left(fault_run):
    _, out, _, _ = fault_run
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert all(any(folder.iterdir()) for folder in out.iterdir() if folder.is_dir())


def test_stats_match_the_manifest(fault_run):
    _, out, by_url, _ = fault_run
    stats = json.loads((out / "download_stats.json").read_text())
    for status in ("ok", "failed", "duplicate"):
        expected = sum(row["status"] == status for row in by_url.values())
        assert stats["status"][status] == expected
    assert stats["reason"]["http_404"] == 1
    assert stats["label"]["dog"]["ok"] == sum(
        row["label"] == "dog" and row["status"] == "ok" for row in by_url.values()
    )
    assert stats["rows_done"] == stats["rows_total"] == len(by_url)
    assert stats["interrupted"] is False


def test_requests_name_the_tool_and_its_version(fault_run):
    assert USER_AGENTS
    assert all(agent.startswith(f"imgclf/{__version__}") for agent in USER_AGENTS)


def test_opt_out_can_be_ignored(fault_server, tmp_path):
    urls = write_list(tmp_path / "urls.csv", [(fault_server.url("/noai.jpg"), "dog")])
    assert main(["--urls", str(urls), "--out", str(tmp_path / "out"), "--quiet",
                 "--ignore-opt-out"]) == 0  # fmt: skip
    assert read_rows(tmp_path / "out")[0]["status"] == "ok"


def test_block_private_refuses_loopback_hosts(fault_server, tmp_path):
    rows = [
        (fault_server.url("/ok.jpg"), "cat"),
        (f"http://localhost:{fault_server.port}/ok.jpg", "cat"),
    ]
    urls = write_list(tmp_path / "urls.csv", rows)
    assert main(["--urls", str(urls), "--out", str(tmp_path / "out"), "--quiet",
                 "--block-private"]) == 0  # fmt: skip
    assert [row["reason"] for row in read_rows(tmp_path / "out")] == ["blocked_private"] * 2


def test_resize_stores_a_smaller_jpeg(fault_server, tmp_path):
    rows = [(fault_server.url("/photo.webp"), "dog"), (fault_server.url("/palette.png"), "dog")]
    urls = write_list(tmp_path / "urls.csv", rows)
    assert main(["--urls", str(urls), "--out", str(tmp_path / "out"), "--quiet",
                 "--resize", "40", "--min-side", "8"]) == 0  # fmt: skip
    for row in read_rows(tmp_path / "out"):
        assert row["status"] == "ok" and row["path"].endswith(".jpg")
        assert max(int(row["width"]), int(row["height"])) == 40
        data = (tmp_path / "out" / row["path"]).read_bytes()
        assert data[:2] == b"\xff\xd8" and hashlib.sha256(data).hexdigest() == row["sha256"]


def test_concurrency_is_limited_per_host_and_in_total(tmp_path):
    active = {"now": 0, "peak": 0}

    async def counted(request):
        active["now"] += 1
        active["peak"] = max(active["peak"], active["now"])
        try:
            # Long enough that the limit is reached even on a loaded machine.
            await asyncio.sleep(0.15)
            return web.Response(body=images.jpeg(seed=int(request.path[2:-4])))
        finally:
            active["now"] -= 1

    routes = {f"/x{index}.jpg": counted for index in range(500, 524)}
    with LoopbackServer(routes) as server:
        # Two host names for the same server: the per-host limit applies to each.
        hosts = [f"127.0.0.1:{server.port}", f"localhost:{server.port}"]
        rows = [(f"http://{hosts[i % 2]}/x{500 + i}.jpg", "x") for i in range(24)]
        urls = write_list(tmp_path / "urls.csv", rows)
        out = tmp_path / "out"
        assert main(["--urls", str(urls), "--out", str(out), "--quiet", "--per-host", "2",
                     "--concurrency", "3"]) == 0  # fmt: skip
        assert active["peak"] == 3  # 2 per host would allow 4: the total limit holds too
        single = write_list(tmp_path / "one-host.csv", [r for r in rows if "127" in r[0]])
        active["peak"] = 0
        assert main(["--urls", str(single), "--out", str(tmp_path / "out2"), "--quiet",
                     "--per-host", "2", "--concurrency", "8"]) == 0  # fmt: skip
        assert active["peak"] == 2
    assert all(row["status"] == "ok" for row in read_rows(out))
