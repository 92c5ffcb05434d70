"""A URL list cut into shards, each downloaded on its own, and the parts merged back in order.

A distributed run keeps its state in `<out>/.shards/<index>/` (the leading dot keeps it out of
the label folders: `safe_label` never yields one):

    shard.json    the shard's place in the input (first row, row count) and a fingerprint of its
                  rows, written by the driver right after `input.csv`
    input.csv     its rows (url,label,split), cut from the list by the driver
    manifest.csv  its part manifest (`.manifest.partial.csv` while it runs): the rows of
                  `run_download` on `input.csv`, images going into the shared `<out>/<label>/`
                  folders, resumable like any manifest
    done.json     the commit marker, written last and atomically once every row is committed:
                  a shard with a done marker whose fingerprint matches is never run again

A shard that has never run gets the rows an earlier run left in `<out>/manifest.csv` for its input
as its part manifest (`seed`), so nothing stored before is fetched again; a shard killed midway
resumes from its own part manifest. `merge_parts` then writes `<out>/manifest.csv` in input order
and resolves duplicates by sha256 across shards exactly as `pipeline._Run._commit` resolves them
in one run: the first row in input order keeps the image, later ones become `duplicate` rows
pointing at it (their files are removed). Its index of kept images lives in a scratch SQLite file,
so the driver's memory does not grow with the list.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from imgclf.acquire.layout import (
    MANIFEST_NAME,
    SHARDS_NAME,
    STATS_NAME,
    remove_stale_temporaries,
)
from imgclf.acquire.manifest import (
    COLUMNS,
    ManifestIndex,
    ManifestRow,
    ManifestWriter,
    TextSink,
    read_manifest,
)
from imgclf.acquire.pipeline import DownloadOptions, ValidationPools, run_download
from imgclf.acquire.reader import UrlRow
from imgclf.acquire.reasons import DUPLICATE, FAILED, OK, STATUSES
from imgclf.acquire.stats import RunStats
from imgclf.fileio import atomic_write, atomic_write_json

SHARDS_DIR = SHARDS_NAME
DEFAULT_SHARD_SIZE = 10_000
INPUT_NAME = "input.csv"
PLACE_NAME = "shard.json"
DONE_NAME = "done.json"


@dataclass(frozen=True)
class Shard:
    """One slice of the input: rows `start` .. `start + rows - 1`; `done` if already committed."""

    index: int
    start: int
    rows: int
    fingerprint: str
    done: bool = False


def shards_root(out: Path) -> Path:
    """The folder holding every shard's state."""
    return out / SHARDS_DIR


def shard_dir(out: Path, index: int) -> Path:
    """The state folder of shard `index`."""
    return shards_root(out) / f"{index:06d}"


def fingerprint(rows: Iterable[UrlRow]) -> str:
    """SHA-1 over the rows' (url, label, split): a changed list is a different shard."""
    digest = hashlib.sha1()
    for row in rows:
        digest.update("\x1f".join((row.url, row.label, row.split)).encode("utf-8") + b"\x1e")
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or unreadable (a torn old file)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def cut_shards(
    rows: Iterable[UrlRow],
    shard_size: int,
    out: Path,
    previous: Path | None,
    retry_failed: bool,
) -> Iterator[Shard]:
    """Walk the input once, shard by shard, and make each shard's folder ready to run.

    Lazy: a shard is cut when the caller asks for it, so the driver holds one shard of rows.
    A finished shard (done marker, same rows) is yielded with `done=True` and left untouched,
    unless `retry_failed` and it has failed rows. Old rows from `previous` (the manifest of
    earlier runs) seed shards that have no state of their own.
    """
    # Old rows are matched by URL as in one run: the index holds a key and an offset per row.
    cursor = ManifestIndex(previous) if previous is not None else None
    try:
        chunk: list[UrlRow] = []
        index = 0
        for row in rows:
            chunk.append(row)
            if len(chunk) == shard_size:
                yield _prepare(out, index, chunk, cursor, retry_failed)
                chunk, index = [], index + 1
        if chunk:
            yield _prepare(out, index, chunk, cursor, retry_failed)
    finally:
        if cursor is not None:
            cursor.close()


def _prepare(
    out: Path,
    index: int,
    chunk: list[UrlRow],
    cursor: ManifestIndex | None,
    retry_failed: bool,
) -> Shard:
    old_rows = [old for old in (cursor.take(row) for row in chunk) if old] if cursor else []
    shard = Shard(index, chunk[0].index, len(chunk), fingerprint(chunk))
    folder = shard_dir(out, index)
    place = read_json(folder / PLACE_NAME)
    if place is not None and place.get("fingerprint") == shard.fingerprint:
        done = read_json(folder / DONE_NAME)
        if done is not None and not (retry_failed and done["status"].get(FAILED)):
            return dataclasses.replace(shard, done=True)
        # Unfinished (or retrying its failures): its own part manifest holds the newest rows.
        (folder / DONE_NAME).unlink(missing_ok=True)
        return shard
    # New, or cut from another list / shard size: start the folder afresh.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    # shard.json is written last: a folder without it is unfinished and cut again next time.
    _write_input(folder / INPUT_NAME, chunk)
    if old_rows:
        seed = ManifestWriter(folder / MANIFEST_NAME)
        for old in old_rows:
            seed.write(old)
        seed.close()
    place = {"index": index, "start": shard.start, "rows": shard.rows}
    atomic_write_json(folder / PLACE_NAME, {**place, "fingerprint": shard.fingerprint})
    return shard


def download_shard(
    shard: Shard,
    options: DownloadOptions,
    report: Callable[[RunStats], None] | None = None,
    pools: ValidationPools | None = None,
) -> dict[str, Any]:
    """Run `run_download` on one shard (on a worker) and commit it; returns its done marker.

    `options` are the driver's (the whole run's); the shard reads its `input.csv`, writes its
    part manifest, and its images into the shared label folders; `pools` are the worker's
    validation pools, kept across shards. Idempotent: a shard that is already committed (a task
    retried after it finished) returns its marker untouched.
    """
    folder = shard_dir(options.out, shard.index)
    done = read_json(folder / DONE_NAME)
    if done is not None and done.get("fingerprint") == shard.fingerprint:
        return done
    part = dataclasses.replace(
        options,
        urls=folder / INPUT_NAME,
        records=folder,
        shared_out=True,
        progress=False,
        report=report,
    )
    stats = run_download(part, pools)
    if stats.interrupted:
        raise InterruptedError(f"shard {shard.index} was interrupted")
    marker = {
        "fingerprint": shard.fingerprint,
        "rows": stats.rows_done,
        "status": {status: stats.by_status[status] for status in STATUSES},
        "reused": stats.reused,
        "images_written": stats.images_written,
        "unowned": stats.unowned,
    }
    atomic_write_json(folder / DONE_NAME, marker)
    return marker


def count_done(stats: RunStats, marker: dict[str, Any]) -> None:
    """Add a finished shard's counts to a running total (for progress and an interrupted run)."""
    for status, count in marker["status"].items():
        stats.by_status[status] += count
    stats.reused += marker["reused"]
    stats.images_written += marker["images_written"]


def merge_parts(out: Path, shards: int, stats: RunStats) -> RunStats:
    """Write `<out>/manifest.csv` from the part manifests of shards 0..`shards`-1, in order.

    Cross-shard duplicates are resolved as one run resolves them; files no row owns any more
    are removed; `stats` (the driver's, with rows_total and started) gets every row counted.
    Idempotent: a merge killed midway is simply done again by the next run.
    """
    markers = [read_json(shard_dir(out, index) / DONE_NAME) for index in range(shards)]
    assert all(markers), "every shard is committed before the merge"
    unowned = {path for marker in markers for path in marker["unowned"]}  # type: ignore[index]
    written = sum(marker["images_written"] for marker in markers)  # type: ignore[index]
    reused = sum(marker["reused"] for marker in markers)  # type: ignore[index]
    owned: set[str] = set()
    merged = {"converted": 0}

    with tempfile.TemporaryDirectory(prefix="imgclf-merge-") as scratch:
        kept = _KeptImages(Path(scratch) / "kept.sqlite")

        def write_merged(handle: IO[bytes]) -> None:
            writer = csv.writer(TextSink(handle), lineterminator="\n")
            writer.writerow(COLUMNS)
            for index in range(shards):
                for _line, row in read_manifest(shard_dir(out, index) / MANIFEST_NAME):
                    row, converted = _resolve(row, kept, stats, out)
                    merged["converted"] += converted
                    if row.status == OK and row.path in unowned:
                        owned.add(row.path)
                    writer.writerow(row.cells())
                    stats.add(row, reused=False, written=False)

        try:
            atomic_write(out / MANIFEST_NAME, write_merged)
        finally:
            kept.close()
    for path in unowned - owned:
        (out / path).unlink(missing_ok=True)
    stats.reused = reused
    # An image a shard wrote and the merge found to be a duplicate was not kept after all.
    stats.images_written = max(0, written - merged["converted"])
    return stats


def _resolve(
    row: ManifestRow, kept: _KeptImages, stats: RunStats, out: Path
) -> tuple[ManifestRow, int]:
    """The single-run duplicate rule (`_Run._commit`) applied across shards; (row, converted)."""
    if row.status not in (OK, DUPLICATE):
        return row, 0
    first = kept.first(row.sha256)
    if first is None:
        if row.status == OK:
            kept.add(row.sha256, row.url, row.label, row.path)
        return row, 0
    first_url, first_label, first_path = first
    converted = 0
    if row.status == OK:
        if row.path != first_path:  # the same URL and label twice share one file
            (out / row.path).unlink(missing_ok=True)
        converted = 1
    row = dataclasses.replace(
        row, status=DUPLICATE, reason="duplicate", path="", duplicate_of=first_url
    )
    if first_label != row.label:
        stats.add_conflict(row, first_label)
    return row, converted


def finish(out: Path, labels: Iterable[str]) -> None:
    """After the merge: drop empty label folders, leftovers of killed tasks and the shard state."""
    for folder in labels:
        with contextlib.suppress(OSError):
            (out / folder).rmdir()  # only when empty: a label whose every row failed
    remove_stale_temporaries(out)
    shutil.rmtree(shards_root(out), ignore_errors=True)


def save_stats(out: Path, stats: RunStats) -> None:
    """download_stats.json of the whole run."""
    if stats.finished is None:
        stats.finished = time.time()
    stats.save(out / STATS_NAME)


class _KeptImages:
    """sha256 -> (url, label, path) of the row that keeps the image, in a scratch SQLite file."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute(
            "CREATE TABLE kept (sha TEXT PRIMARY KEY, url TEXT, label TEXT, path TEXT) "
            "WITHOUT ROWID"
        )
        self._db.execute("BEGIN")

    def first(self, sha256: str) -> tuple[str, str, str] | None:
        found = self._db.execute(
            "SELECT url, label, path FROM kept WHERE sha = ?", (sha256,)
        ).fetchone()
        return None if found is None else (found[0], found[1], found[2])

    def add(self, sha256: str, url: str, label: str, path: str) -> None:
        self._db.execute("INSERT INTO kept VALUES (?, ?, ?, ?)", (sha256, url, label, path))

    def close(self) -> None:
        self._db.close()


def _write_input(path: Path, rows: list[UrlRow]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("url", "label", "split"))
        writer.writerows((row.url, row.label, row.split) for row in rows)
