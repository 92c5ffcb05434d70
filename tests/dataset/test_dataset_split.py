"""split_samples: stratified, seeded, manifest test rows, sha256 groups; the split files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from imgclf.dataset import Sample, read_split, split_record, split_samples, write_split
from imgclf.errors import InputError


def make_samples(counts: dict[str, int], test_every: int = 0) -> list[Sample]:
    """Distinct images: `counts[label]` samples of each label, every n-th marked test."""
    samples = []
    for label, count in counts.items():
        for index in range(count):
            split = "test" if test_every and index % test_every == 0 else None
            samples.append(Sample(f"{label}/{index:04d}.jpg", label, f"{label}-{index}", split))
    return samples


def labels(samples: list[Sample]) -> Counter:
    return Counter(sample.label for sample in samples)


def test_valid_is_stratified_round_fraction_of_every_class():
    samples = make_samples({"a": 100, "b": 40, "c": 7})

    parts = split_samples(samples, val_fraction=0.15, seed=1)

    assert labels(parts["valid"]) == {"a": 15, "b": 6, "c": 1}
    assert labels(parts["train"]) == {"a": 85, "b": 34, "c": 6}
    assert parts["test"] == []
    assert sorted(parts["train"] + parts["valid"], key=lambda s: s.path) == sorted(
        samples, key=lambda s: s.path
    )
    for part in parts.values():
        assert [s.path for s in part] == sorted(s.path for s in part)


def test_every_class_of_two_or_more_keeps_one_valid_and_one_train():
    parts = split_samples(make_samples({"a": 2, "b": 1, "c": 3}), val_fraction=0.01, seed=0)
    assert labels(parts["valid"]) == {"a": 1, "c": 1}
    assert labels(parts["train"]) == {"a": 1, "b": 1, "c": 2}
    parts = split_samples(make_samples({"a": 2, "b": 3}), val_fraction=0.99, seed=0)
    assert labels(parts["train"]) == {"a": 1, "b": 1}


def test_same_seed_same_split_other_seed_other_split():
    samples = make_samples({"a": 50, "b": 50})
    first = split_samples(samples, seed=7)
    assert split_samples(list(reversed(samples)), seed=7) == first
    assert split_samples(samples, seed=8)["valid"] != first["valid"]


def test_adding_a_class_does_not_reshuffle_the_others():
    before = split_samples(make_samples({"a": 40, "b": 40}), seed=3)
    after = split_samples(make_samples({"a": 40, "b": 40, "c": 40}), seed=3)
    assert [s for s in after["valid"] if s.label != "c"] == before["valid"]


def test_manifest_test_rows_are_the_test_part():
    samples = make_samples({"a": 30, "b": 30}, test_every=5)

    parts = split_samples(samples, val_fraction=0.2, seed=0)

    assert parts["test"] == sorted((s for s in samples if s.split == "test"), key=lambda s: s.path)
    # val_fraction applies to the 24 non-test images of each class
    assert labels(parts["valid"]) == {"a": 5, "b": 5}


def test_identical_images_never_straddle_parts():
    samples = make_samples({"a": 40, "b": 40})
    # Five copies of one picture in class a, one copy of a test image in class b.
    copies = [Sample(f"a/copy{i}.jpg", "a", "same", None) for i in range(5)]
    leak = Sample("b/leak.jpg", "b", samples[0].sha256, None)
    test_original = Sample(samples[0].path, "a", samples[0].sha256, "test")
    samples = [test_original, *samples[1:], *copies, leak]

    for seed in range(20):
        parts = split_samples(samples, val_fraction=0.3, seed=seed)
        part_of = {s.path: name for name, found in parts.items() for s in found}
        assert len({part_of[s.path] for s in copies}) == 1
        assert part_of["b/leak.jpg"] == "test"
        digests = {name: {s.sha256 for s in found} for name, found in parts.items()}
        assert not digests["train"] & digests["valid"]
        assert not (digests["train"] | digests["valid"]) & digests["test"]


def test_test_fraction_holds_out_a_stratified_test_part():
    parts = split_samples(make_samples({"a": 100, "b": 20}), val_fraction=0.15, test_fraction=0.1)
    assert labels(parts["test"]) == {"a": 10, "b": 2}
    assert labels(parts["valid"]) == {"a": 15, "b": 3}
    assert labels(parts["train"]) == {"a": 75, "b": 15}


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction", "message"),
    [
        (0.0, 0.0, r"val_fraction is 0.0; it must be between 0 and 1"),
        (1.0, 0.0, r"val_fraction is 1.0"),
        (0.5, 0.5, r"test_fraction is 0.5; it must be at least 0 and leave images"),
        (0.15, -0.1, r"test_fraction is -0.1"),
    ],
)
def test_bad_fractions(val_fraction: float, test_fraction: float, message: str):
    with pytest.raises(InputError, match=message):
        split_samples(
            make_samples({"a": 5, "b": 5}), val_fraction=val_fraction, test_fraction=test_fraction
        )


@pytest.mark.parametrize("name", ["split.csv", "split.json"])
def test_split_file_round_trip(tmp_path: Path, name: str):
    record = split_record(tmp_path, split_samples(make_samples({"a": 9, "b": 9}, test_every=4)))

    path = write_split(tmp_path / "run" / name, record)

    assert read_split(path, root=tmp_path) == record
    assert not list(path.parent.glob("*.tmp"))


def test_split_record_is_the_weights_file_format(tmp_path: Path):
    record = split_record(tmp_path, split_samples(make_samples({"a": 3, "b": 3}), seed=0))
    assert record["root"] == str(tmp_path)
    assert set(record["parts"]) == {"train", "valid", "test"}
    assert all(isinstance(row, list) and len(row) == 2 for row in record["parts"]["train"])
    json.dumps(record)  # plain types only


def test_read_split_errors_name_the_file(tmp_path: Path):
    with pytest.raises(InputError, match=r"Split file .*absent.csv does not exist"):
        read_split(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,part\na/1.jpg,a,holdout\n")
    with pytest.raises(InputError, match=r"bad.csv line 2 has part 'holdout'"):
        read_split(bad)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match=r"bad.json is not valid JSON"):
        read_split(tmp_path / "bad.json")
