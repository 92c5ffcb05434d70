"""The manifest is never lost, always readable, and resume finds old rows by URL."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from imgclf.acquire.lock import exclusive_output
from imgclf.acquire.manifest import read_manifest
from imgclf.acquire.reader import MAX_URL_LENGTH
from imgclf.commands.download import main
from imgclf.dataset.samples import read_samples
from imgclf.errors import InputError
from tests.acquire import sample_images as images
from tests.acquire.faults import read_rows, write_list
from tests.support.loopback import LoopbackServer, respond

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "utils" / "download_data.py"
QUIET = ["--quiet", "--retries", "0"]
DATA_URL = "data:image/png;base64," + "A" * 145_000  # as scraped lists hold them


@pytest.fixture(scope="module")
def server():
    routes = {f"/img/{index}.jpg": respond(images.jpeg(seed=400 + index)) for index in range(12)}
    with LoopbackServer(routes) as running:
        yield running


def rows_for(server, count=12):
    return [
        (server.url(f"/img/{index}.jpg"), f"c{index % 2}", "test" if index % 4 == 0 else "")
        for index in range(count)
    ]


def download(urls: Path, out: Path, *extra: str) -> int:
    return main(["--urls", str(urls), "--out", str(out), *QUIET, *extra])


# -- 5: the previous manifest stays until the new one replaces it ----------------------------


def test_a_rerun_killed_early_keeps_the_manifest_and_the_dataset_refuses_the_folder(
    server, tmp_path
):
    urls = write_list(tmp_path / "urls.csv", rows_for(server), header=("url", "label", "split"))
    out = tmp_path / "out"
    assert download(urls, out) == 0
    before = (out / "manifest.csv").read_bytes()
    for image in out.glob("*/*.jpg"):
        image.unlink()  # the rerun has work to do
    release = threading.Event()

    async def held(request):  # keeps the rerun busy until it is killed
        while not release.is_set():
            await asyncio.sleep(0.01)
        return web.Response(body=images.jpeg(seed=399), content_type="image/jpeg")

    with LoopbackServer({"/hold.jpg": held}) as holder:
        rows = [(holder.url("/hold.jpg"), "c0", ""), *rows_for(server)]
        write_list(urls, rows, header=("url", "label", "split"))
        command = [sys.executable, str(SCRIPT), "--urls", str(urls), "--out", str(out), *QUIET]
        process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE)
        try:
            while holder.hits["/hold.jpg"] == 0:
                assert process.poll() is None, process.communicate()
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)  # a crash early in the rerun
            process.wait()
        finally:
            release.set()
            process.kill()
            process.communicate()
    assert (out / ".manifest.partial.csv").exists()
    assert (out / "manifest.csv").read_bytes() == before
    write_list(urls, rows_for(server), header=("url", "label", "split"))
    with pytest.raises(InputError, match=r"did not finish; rerun the same download") as error:
        read_samples(out)
    assert "\n" not in str(error.value)
    assert download(urls, out) == 0
    classes, samples = read_samples(out)
    assert classes == ["c0", "c1"] and sum(s.split == "test" for s in samples) == 3


def test_a_folder_with_download_traces_but_no_manifest_is_refused_not_read_as_folders(
    server, tmp_path
):
    urls = write_list(tmp_path / "urls.csv", rows_for(server), header=("url", "label", "split"))
    out = tmp_path / "out"
    assert download(urls, out) == 0
    (out / "manifest.csv").unlink()  # lost: the class folders alone would hide the test split
    with pytest.raises(InputError, match=r"download_stats.json but no manifest.csv"):
        read_samples(out)


def test_a_folder_being_downloaded_into_is_refused(server, tmp_path):
    urls = write_list(tmp_path / "urls.csv", rows_for(server), header=("url", "label", "split"))
    out = tmp_path / "out"
    assert download(urls, out) == 0
    with exclusive_output(out), pytest.raises(InputError, match=r"being written by a running"):
        read_samples(out)


# -- 6: over-long URLs are refused as read; every manifest stays readable ---------------------


def write_inputs(folder: Path, rows: list[tuple[str, str]]) -> dict[str, Path]:
    folder.mkdir()
    lists = {"csv": write_list(folder / "list.csv", rows)}
    with open(folder / "list.tsv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerows([("url", "label"), *rows])
    lists["tsv"] = folder / "list.tsv"
    lines = "".join(json.dumps({"url": url, "label": label}) + "\n" for url, label in rows)
    (folder / "list.jsonl").write_text(lines, encoding="utf-8")
    lists["jsonl"] = folder / "list.jsonl"
    labelled = folder / "txt"
    labelled.mkdir()
    (labelled / "c0.txt").write_text("".join(url + "\n" for url, _ in rows), encoding="utf-8")
    lists["txt"] = labelled
    with gzip.open(folder / "list.csv.gz", "wt", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([("url", "label"), *rows])
    lists["gz"] = folder / "list.csv.gz"
    return lists


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "txt", "gz"])
def test_an_over_long_url_is_refused_with_a_reason_in_every_format(server, tmp_path, kind):
    rows = [(server.url("/img/0.jpg"), "c0"), (DATA_URL, "c0"), (server.url("/img/1.jpg"), "c0")]
    urls = write_inputs(tmp_path / "in", rows)[kind]
    out = tmp_path / "out"
    for _run in range(2):  # the rerun reads the manifest and keeps every row
        assert download(urls, out) == 0
        rows_read = read_rows(out)
        assert [row["reason"] for row in rows_read] == ["", "url_too_long", ""]
        assert len(rows_read[1]["url"]) < MAX_URL_LENGTH
        assert rows_read[1]["url"].startswith("data:image/png;base64,AAA")
    assert len(list(read_manifest(out / "manifest.csv"))) == 3


def test_a_manifest_with_cells_beyond_the_csv_default_limit_is_read(tmp_path):
    # An earlier version wrote such a row whole; every reader failed on it.
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["url", "label", "split", "status", "reason"])
        writer.writerow([DATA_URL, "c0", "", "failed", "unsupported_scheme"])
    [(line, row)] = list(read_manifest(path))
    assert (line, row.url, row.reason) == (2, DATA_URL, "unsupported_scheme")


def test_an_over_long_label_is_an_input_error(tmp_path, capsys):
    urls = write_list(tmp_path / "urls.csv", [("http://example.test/a.jpg", "x" * 5000)])
    assert download(urls, tmp_path / "out") == 2
    assert "the label is 5,000 characters long" in capsys.readouterr().err


def test_a_manifest_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"url,label,status\nhttp://a/x.jpg,caf\xe9,ok\n")
    with pytest.raises(InputError, match=r"manifest.csv line 2 is not UTF-8"):
        list(read_manifest(path))


# -- 7: resume matches old rows by URL ---------------------------------------------------------


def resave_like_a_spreadsheet(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))


def test_resume_matches_by_url_after_edits_removals_and_a_spreadsheet_resave(server, tmp_path):
    rows = rows_for(server, 10)
    urls = write_list(tmp_path / "urls.csv", rows, header=("url", "label", "split"))
    out = tmp_path / "out"
    assert download(urls, out) == 0
    assert all(server.hits[f"/img/{index}.jpg"] >= 1 for index in range(10))
    resave_like_a_spreadsheet(out / "manifest.csv")
    before = dict(server.hits)

    edited = list(rows)
    del edited[1]  # a removed row
    edited[3] = (server.url("/img/11.jpg"), edited[3][1], edited[3][2])  # an edited URL
    edited.insert(0, (server.url("/img/10.jpg"), "c0", ""))  # a new first row
    edited[5] = (edited[5][0], edited[5][1], "test")  # a changed split: no download needed
    write_list(urls, edited, header=("url", "label", "split"))
    assert download(urls, out) == 0

    fetched = {path: server.hits[path] - before.get(path, 0) for path in server.hits}
    assert {path for path, count in fetched.items() if count} == {"/img/10.jpg", "/img/11.jpg"}
    final = read_rows(out)
    assert [row["url"] for row in final] == [url for url, _, _ in edited]
    assert [row["split"] for row in final] == [split for _, _, split in edited]
    assert all(row["status"] == "ok" for row in final)
    assert (out / "manifest.csv").read_bytes()[:3] != b"\xef\xbb\xbf"  # rewritten clean


def test_a_manifest_resaved_with_semicolons_still_resumes(server, tmp_path):
    urls = write_list(tmp_path / "urls.csv", rows_for(server, 4), header=("url", "label", "split"))
    out = tmp_path / "out"
    assert download(urls, out) == 0
    text = (out / "manifest.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8-sig") as handle:
        csv.writer(handle, delimiter=";").writerows(rows)
    before = dict(server.hits)
    assert download(urls, out) == 0
    assert dict(server.hits) == before  # every row was found again: nothing fetched


def test_an_edited_manifest_path_is_never_read(server, tmp_path):
    urls = write_list(tmp_path / "urls.csv", rows_for(server, 2), header=("url", "label", "split"))
    out = tmp_path / "out"
    assert download(urls, out) == 0
    secret = tmp_path / "secret.jpg"
    first = read_rows(out)[0]
    secret.write_bytes((out / first["path"]).read_bytes())  # same bytes, outside the folder
    text = (out / "manifest.csv").read_text(encoding="utf-8")
    (out / "manifest.csv").write_text(text.replace(first["path"], "../secret.jpg"))
    before = server.hits[first["url"].split(str(server.port))[1]]
    assert download(urls, out) == 0
    assert read_rows(out)[0]["path"] == first["path"]  # fetched again into its own place
    assert server.hits[first["url"].split(str(server.port))[1]] == before + 1


def test_unencodable_text_from_json_is_refused_not_written(server, tmp_path):
    lines = json.dumps({"url": server.url("/img/0.jpg") + "\ud800", "label": "a"}) + "\n"
    lines += json.dumps({"url": server.url("/img/1.jpg"), "label": "a"}) + "\n"
    (tmp_path / "list.jsonl").write_text(lines, encoding="utf-8")
    assert download(tmp_path / "list.jsonl", tmp_path / "out") == 0
    assert [row["reason"] for row in read_rows(tmp_path / "out")] == ["invalid_url", ""]
    bad_label = json.dumps({"url": server.url("/img/1.jpg"), "label": "\udcff"}) + "\n"
    (tmp_path / "label.jsonl").write_text(bad_label, encoding="utf-8")
    assert download(tmp_path / "label.jsonl", tmp_path / "out2") == 2


def test_a_folder_whose_download_was_interrupted_is_refused(server, tmp_path):
    urls = write_list(tmp_path / "urls.csv", rows_for(server), header=("url", "label", "split"))
    out = tmp_path / "out"
    assert download(urls, out) == 0
    stats = json.loads((out / "download_stats.json").read_text())
    (out / "download_stats.json").write_text(json.dumps({**stats, "interrupted": True}))
    with pytest.raises(InputError, match=r"its last download was interrupted"):
        read_samples(out)
    assert download(urls, out) == 0  # finishing it makes the folder readable again
    assert read_samples(out)[0] == ["c0", "c1"]


def test_a_fifo_as_the_url_list_is_an_input_error_not_a_hang(tmp_path, capsys):
    os.mkfifo(tmp_path / "urls.csv")
    assert download(tmp_path / "urls.csv", tmp_path / "out") == 2
    assert "not a regular file or folder" in capsys.readouterr().err
