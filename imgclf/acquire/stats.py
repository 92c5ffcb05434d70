"""Run statistics: counted as rows are committed, saved to `download_stats.json`, printed."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.acquire.manifest import ManifestRow
from imgclf.acquire.reasons import DUPLICATE, FAILED, OK, STATUSES
from imgclf.fileio import atomic_write_json

MAX_CONFLICT_EXAMPLES = 100
MAX_PRINTED_LABELS = 20


@dataclass
class RunStats:
    """Counters for one run; `reused` rows came from an earlier run's manifest."""

    rows_total: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    interrupted: bool = False
    by_status: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    by_label: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    bytes_ok: int = 0
    reused: int = 0
    images_written: int = 0
    label_conflicts: int = 0
    worker_restarts: int = 0  # validation pools rebuilt after a worker died
    conflict_examples: list[dict[str, str]] = field(default_factory=list)

    def add(self, row: ManifestRow, reused: bool, written: bool) -> None:
        """Count one committed manifest row."""
        self.by_status[row.status] += 1
        self.by_label[row.label][row.status] += 1
        if row.reason:
            self.by_reason[row.reason] += 1
        if row.status == OK:
            self.bytes_ok += row.bytes or 0
        self.reused += reused
        self.images_written += written

    def add_conflict(self, row: ManifestRow, kept_label: str) -> None:
        """The same bytes under two labels: label noise that would leak between splits."""
        self.label_conflicts += 1
        if len(self.conflict_examples) < MAX_CONFLICT_EXAMPLES:
            self.conflict_examples.append(
                {
                    "url": row.url,
                    "label": row.label,
                    "duplicate_of": row.duplicate_of,
                    "kept_label": kept_label,
                }
            )

    @property
    def rows_done(self) -> int:
        return sum(self.by_status.values())

    @property
    def duration(self) -> float:
        return (self.finished or time.time()) - self.started

    def to_json(self) -> dict[str, Any]:
        """The content of download_stats.json."""
        seconds = max(self.duration, 1e-9)
        return {
            "rows_total": self.rows_total,
            "rows_done": self.rows_done,
            "interrupted": self.interrupted,
            "status": {status: self.by_status[status] for status in STATUSES},
            "reason": dict(self.by_reason.most_common()),
            "label": {
                label: {status: counts[status] for status in STATUSES}
                for label, counts in sorted(self.by_label.items())
            },
            "bytes_ok": self.bytes_ok,
            "reused_from_previous_run": self.reused,
            "images_written": self.images_written,
            "duration_s": round(self.duration, 3),
            "rows_per_s": round(self.rows_done / seconds, 1),
            "images_per_s": round(self.images_written / seconds, 1),
            "label_conflicts": self.label_conflicts,
            "worker_restarts": self.worker_restarts,
            "label_conflict_examples": self.conflict_examples,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
        }

    def save(self, path: Path) -> None:
        """Write download_stats.json atomically."""
        atomic_write_json(path, self.to_json())


def format_summary(stats: RunStats, out: Path) -> str:
    """The human summary printed at the end of a run."""
    seconds = max(stats.duration, 1e-9)
    mib = stats.bytes_ok / 2**20
    state = "interrupted after" if stats.interrupted else "done in"
    lines = [
        f"{out}: {state} {stats.duration:.1f} s, {stats.rows_done:,} of {stats.rows_total:,} rows "
        f"({stats.rows_done / seconds:,.0f} rows/s); {stats.images_written:,} images written "
        f"({stats.images_written / seconds:,.0f} images/s), {stats.reused:,} rows kept from an "
        f"earlier run, {mib:,.1f} MiB of images in total",
        "",
        _table(["status", "rows"], [[s, f"{stats.by_status[s]:,}"] for s in STATUSES]),
    ]
    if stats.by_reason:
        reasons = [[reason, f"{n:,}"] for reason, n in stats.by_reason.most_common()]
        lines += ["", _table(["reason", "rows"], reasons)]
    labels = sorted(stats.by_label.items(), key=lambda item: (-item[1][OK], item[0]))
    shown = [
        [label, f"{c[OK]:,}", f"{c[FAILED]:,}", f"{c[DUPLICATE]:,}"]
        for label, c in labels[:MAX_PRINTED_LABELS]
    ]
    lines += ["", _table(["label", "ok", "failed", "duplicate"], shown)]
    if len(labels) > MAX_PRINTED_LABELS:
        lines.append(f"... and {len(labels) - MAX_PRINTED_LABELS:,} more labels (see stats JSON)")
    if stats.label_conflicts:
        lines += [
            "",
            f"Label conflicts: {stats.label_conflicts:,} duplicate rows carry another label than "
            "the image they duplicate "
            "(label noise that leaks between splits); examples in download_stats.json.",
        ]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])
