"""Train / valid / test split: manifest test rows held out, the rest stratified and seeded.

Images with the same sha256 form one group and a group is never cut across parts, so a
duplicate of a test image can't leak into training. Every class is shuffled with its own
seeded generator, so adding a class does not reshuffle the others.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from pathlib import Path

from imgclf.dataset.samples import Sample
from imgclf.errors import InputError
from imgclf.fileio import atomic_write_json, atomic_write_text

PARTS = ("train", "valid", "test")
TEST_SPLIT = "test"


def split_samples(
    samples: list[Sample],
    *,
    val_fraction: float = 0.15,
    seed: int = 42,
    test_fraction: float = 0.0,
) -> dict[str, list[Sample]]:
    """{"train", "valid", "test"} → samples sorted by path.

    test: every sample whose manifest split is "test", plus any image identical (sha256) to one;
    with `test_fraction` > 0 also that fraction of every class's other images (for data without
    a test split, e.g. plain folders).
    valid: per class, round(val_fraction × images) (at least 1 for classes of two or more images,
    never all of them), drawn as whole sha256 groups in a seeded random order.
    Both fractions are of the images not already in the manifest's test split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(
            f"val_fraction is {val_fraction}; it must be between 0 and 1 (e.g. 0.15)."
        )
    if not 0.0 <= test_fraction < 1.0 - val_fraction:
        raise InputError(
            f"test_fraction is {test_fraction}; it must be at least 0 and leave images for "
            f"training after val_fraction {val_fraction} (e.g. 0.15)."
        )
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.path):
        groups[sample.sha256 or f"path:{sample.path}"].append(sample)

    parts: dict[str, list[Sample]] = {part: [] for part in PARTS}
    by_class: dict[str, list[list[Sample]]] = defaultdict(list)
    for members in groups.values():
        if any(sample.split == TEST_SPLIT for sample in members):
            parts["test"] += members
        else:
            # A group's class is its first member's label (duplicates normally share a label).
            by_class[members[0].label].append(members)

    for label in sorted(by_class):
        class_groups = by_class[label]
        random.Random(f"{seed}/{label}").shuffle(class_groups)
        total = sum(len(members) for members in class_groups)
        # Groups are dealt in the shuffled order: first to test, then to valid, the rest train.
        test_quota = _held_out_count(total, test_fraction)
        valid_quota = min(_held_out_count(total, val_fraction), max(0, total - test_quota - 1))
        quotas = [("test", test_quota), ("valid", valid_quota)]
        dealt = {"test": 0, "valid": 0}
        for members in class_groups:
            part = next((p for p, quota in quotas if dealt[p] < quota), "train")
            if part != "train":
                dealt[part] += len(members)
            parts[part] += members
    return {part: sorted(found, key=lambda s: s.path) for part, found in parts.items()}


def _held_out_count(total: int, fraction: float) -> int:
    """Images of one class to hold out: at least one, never all (a lone image trains)."""
    if total < 2 or fraction <= 0:
        return 0
    return min(total - 1, max(1, round(total * fraction)))


def split_record(root: str | Path, parts: dict[str, list[Sample]]) -> dict:
    """The split as stored in the weights file: {"root", "parts": {part: [[path, label], ...]}}."""
    return {
        "root": str(root),
        "parts": {
            part: [[sample.path, sample.label] for sample in parts.get(part, [])] for part in PARTS
        },
    }


def write_split(path: str | Path, split: dict) -> Path:
    """Write a `split_record` atomically: JSON for `*.json`, else CSV `path,label,part`."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return atomic_write_json(path, split)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "part"])
    for part, rows in split["parts"].items():
        writer.writerows([image, label, part] for image, label in rows)
    return atomic_write_text(path, buffer.getvalue())


def read_split(path: str | Path, root: str | Path | None = None) -> dict:
    """Read a split written by `write_split` back into a `split_record` dict.

    A CSV does not carry the data root; pass `root` (default: the CSV's folder).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Split file {path} does not exist; pass the split written by training.")
    if path.suffix.lower() == ".json":
        try:
            split = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise InputError(f"Split file {path} is not valid JSON ({error}).") from error
        if not isinstance(split, dict) or not isinstance(split.get("parts"), dict):
            raise InputError(f"Split file {path} has no 'parts' mapping; pass a written split.")
        return split
    parts: dict[str, list[list[str]]] = {part: [] for part in PARTS}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != ["path", "label", "part"]:
            raise InputError(
                f"Split file {path} must have the header path,label,part, "
                f"found {reader.fieldnames}."
            )
        for line, row in enumerate(reader, start=2):
            if row["part"] not in parts:
                raise InputError(
                    f"Split file {path} line {line} has part {row['part']!r}; "
                    f"expected one of {', '.join(PARTS)}."
                )
            parts[row["part"]].append([row["path"], row["label"]])
    return {"root": str(root if root is not None else path.parent), "parts": parts}
