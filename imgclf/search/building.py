"""`python utils/search.py build`: a data folder and a weights file → an index folder.

Which images: `imgclf.dataset.read_samples` (manifest.csv or `<label>/` folders), the classes the
model knows only (images of other classes are left out and counted: `add-class` adds a new
class). Each item's split, for `evaluate`:
1. the split stored in the weights file, when its data root is this folder (paths match);
2. else the manifest's split column ("test" rows are test, the rest train);
3. else a seeded split made here (imgclf.dataset.split, 15% test per class): the model may have
   trained on those test images, which `evaluate` then says.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from imgclf.dataset.samples import Sample, hash_files, read_samples
from imgclf.dataset.split import split_samples
from imgclf.search.embedding import EmbedderSettings, PathEmbedder
from imgclf.search.gallery import BuildReport, Record, build_gallery
from imgclf.search.model import load_search_model

SEEDED_TEST_FRACTION = 0.15
SEEDED_SPLIT_SEED = 0


@dataclass
class BuildSummary:
    """The build's report plus what was left out before embedding."""

    report: BuildReport
    split_source: str
    unknown_classes: dict[str, int]


def _parts_by_path(parts: dict[str, list]) -> dict[str, str]:
    return {
        row[0] if isinstance(row, list) else row.path: part
        for part, rows in parts.items()
        for row in rows
    }


def assign_splits(root: Path, samples: list[Sample], stored: dict) -> tuple[dict[str, str], str]:
    """path → split for `samples`, and where the split came from (see the module docstring)."""
    stored_root = stored.get("root")
    if stored_root and Path(stored_root).resolve() == root.resolve():
        by_path = _parts_by_path(stored.get("parts") or {})
        return {
            s.path: by_path.get(s.path, "") for s in samples
        }, "the split stored in the weights"
    if any(s.split for s in samples):
        split = {s.path: "test" if s.split == "test" else "train" for s in samples}
        return split, f"the split column of {root}/manifest.csv"
    # The dataset's own split, with its default valid share: train / valid / test as training
    # would have cut this folder with test_fraction 0.15 (the seed may differ from the run's).
    parts = split_samples(samples, seed=SEEDED_SPLIT_SEED, test_fraction=SEEDED_TEST_FRACTION)
    source = (
        f"a seeded split made here ({SEEDED_TEST_FRACTION:.0%} test per class): the weights "
        f"store no split of {root}, so the model may have trained on these test images"
    )
    return _parts_by_path(parts), source


def records_of(root: Path, classes: tuple[str, ...], stored_split: dict):
    """Records of the images of `classes` under `root`, the split source, and the count of
    images per class the model does not know (left out)."""
    _, samples = read_samples(root)
    missing = [i for i, s in enumerate(samples) if not s.sha256]
    if missing:  # a manifest row without a digest: hash the file
        digests = hash_files([root / samples[i].path for i in missing])
        for i, digest in zip(missing, digests, strict=True):
            s = samples[i]
            samples[i] = Sample(s.path, s.label, digest, s.split)
    known = set(classes)
    unknown = Counter(s.label for s in samples if s.label not in known)
    samples = [s for s in samples if s.label in known]
    splits, source = assign_splits(root, samples, stored_split)
    records = [
        Record(s.path, s.label, s.sha256 or "", splits.get(s.path, ""), str(root / s.path))
        for s in samples
    ]
    return records, source, dict(sorted(unknown.items()))


def build(
    weights: str | Path,
    data: str | Path,
    index: str | Path,
    *,
    kind: str = "auto",
    backend: str | None = None,
    settings: EmbedderSettings | None = None,
) -> BuildSummary:
    """Build or update the index folder `index` over `data` with `weights`."""
    model = load_search_model(weights, backend)
    records, source, unknown = records_of(Path(data), model.info.classes, model.stored_split)
    embed = PathEmbedder(model.predictor, settings or EmbedderSettings())
    report = build_gallery(
        index,
        records,
        embed,
        model.info,
        kind=kind,
        extra={"data_root": str(data), "split_source": source},
    )
    return BuildSummary(report, source, unknown)


def format_build(summary: BuildSummary, index: str | Path) -> str:
    """What the build did, in a few lines."""
    report, gallery = summary.report, summary.report.gallery
    info = gallery.meta["index"]
    lines = [*(f"note: {note}" for note in report.notes)]
    if summary.unknown_classes:
        left = ", ".join(f"{name} ({n})" for name, n in summary.unknown_classes.items())
        lines.append(
            f"left out images of classes the model does not know: {left}; "
            "add a class with: python utils/search.py add-class NAME FILES..."
        )
    lines += [
        f"index: {info['reason']}"
        + (
            f", nprobe {info['nprobe']} (recall@10 {info['calibrated_recall_at_10']:.3f} "
            "against exact search on a sample of the gallery)"
            if info["kind"] == "approximate"
            else ""
        ),
        f"items: {len(gallery.items)} ({report.embedded} embedded now, {report.reused} reused, "
        f"{report.dropped} dropped), {gallery.dim}-d embeddings of {gallery.meta['arch']}",
        f"split: {summary.split_source}",
        f"classes with prototypes: {', '.join(gallery.prototype_classes)}",
        f"wrote {Path(index) / 'meta.json'}",
    ]
    for path, reason in report.failed:
        lines.append(f"failed: {path}: {reason}")
    return "\n".join(lines)
