"""`python utils/search.py evaluate`: how well the embeddings retrieve and classify.

Gallery: the index's training items and the images added with `add-class`. Queries: the
index's items of `--split` (default test, else valid), whose embeddings and logits the build
stored, or with `--data DIR` the images of DIR (labels from its folders or manifest) that are
not gallery images (by sha256), embedded now with the index's weights: for classes added with
`add-class`, every image of DIR but the few that were added.

Per query and then averaged, with bootstrap intervals over the queries: recall@1/5/10, MAP@R,
the accuracy of a k-nearest-neighbour vote, of the nearest prototype, and of the classifier
itself (its argmax; a query of a class the classifier does not have counts as wrong). Each is
reported for all queries, for the queries of the classes the model was trained on, and for the
queries of added classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.dataset.samples import read_samples
from imgclf.errors import InputError
from imgclf.fileio import atomic_write_json
from imgclf.predict.inputs import Item
from imgclf.search.embedding import EmbedderSettings, embed_items
from imgclf.search.index import build_faiss, choose_index, search
from imgclf.search.metrics import (
    average_precision_at_r,
    bootstrap_mean,
    knn_vote,
    nearest_prototype,
    recall_hits,
)
from imgclf.search.pictures import plot_embeddings
from imgclf.search.querying import open_index
from imgclf.search.store import ADDED_SPLIT, Gallery, read_gallery

RECALL_KS = (1, 5, 10)
GROUPS = ("all", "model classes", "added classes")


@dataclass
class Queries:
    """Labelled query embeddings and the classifier's logits for them."""

    embeddings: np.ndarray
    logits: np.ndarray
    labels: list[str]
    description: str
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RetrievalResult:
    """The report as a dict, its table, the files written and the failed queries."""

    report: dict[str, Any]
    text: str
    written: list[Path]
    failed: list[tuple[str, str]]


def stored_queries(gallery: Gallery, split: str | None) -> Queries:
    """The index's own items of `split` (None: test, or valid when the index has no test)."""
    present = {it.split for it in gallery.items}
    part = split or ("test" if "test" in present else "valid")
    rows = [r for r, it in enumerate(gallery.items) if it.split == part]
    if not rows:
        counts = ", ".join(
            f"{name} ({sum(it.split == name for it in gallery.items)})" for name in sorted(present)
        )
        raise InputError(
            f"The index has no {part!r} items (splits: {counts}); pick another --split or pass "
            "--data DIR with labelled query images."
        )
    source = gallery.meta.get("split_source", "the index")
    return Queries(
        gallery.embeddings[rows],
        gallery.logits[rows],
        [gallery.items[r].label for r in rows],
        f"the {part} items of the index ({len(rows)}; split from {source})",
    )


def folder_queries(
    index: Path, gallery: Gallery, data: Path, settings: EmbedderSettings, backend: str | None
) -> Queries:
    """Images of `data` that are not gallery images, embedded with the index's weights."""
    _, model = open_index(index, None, backend)
    in_gallery = {it.sha256 for it in gallery.items if it.split in ("train", ADDED_SPLIT)}
    _, samples = read_samples(data)
    samples = [s for s in samples if s.sha256 not in in_gallery]
    if not samples:
        raise InputError(f"Every image of {data} is already in the gallery; pass other images.")
    embedded = embed_items(model.predictor, [Item(str(data / s.path)) for s in samples], settings)
    ok = [i for i in range(len(samples)) if i not in embedded.errors]
    failed = [(samples[i].path, reason) for i, reason in sorted(embedded.errors.items())]
    return Queries(
        embedded.embeddings[ok],
        embedded.logits[ok],
        [samples[i].label for i in ok],
        f"the images of {data} not in the gallery ({len(ok)})",
        failed,
    )


def _group_masks(labels: np.ndarray, model_classes: set[str], added: set[str]) -> dict:
    return {
        "all": np.ones(len(labels), dtype=bool),
        "model classes": np.isin(labels, sorted(model_classes)),
        "added classes": np.isin(labels, sorted(added)),
    }


def retrieval_metrics(
    gallery: Gallery,
    queries: Queries,
    *,
    knn_k: int = 5,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric per group of queries: {group: {metric: {value, ci_low, ci_high}}, ...}."""
    rows = [r for r, it in enumerate(gallery.items) if it.split in ("train", ADDED_SPLIT)]
    if not rows:
        raise InputError(
            "The index has no training or added items to search (its split came from "
            f"{gallery.meta.get('split_source', 'nowhere')}); build it over the training data."
        )
    classes = list(gallery.prototype_classes)
    index_of = {name: k for k, name in enumerate(classes)}
    gallery_labels = np.array([index_of.get(gallery.items[r].label, -1) for r in rows])
    query_labels = np.array([index_of.get(label, -1) for label in queries.labels])
    sizes = np.bincount(gallery_labels[gallery_labels >= 0], minlength=len(classes))
    present = sizes[query_labels[query_labels >= 0]]
    depth = int(max(max(RECALL_KS), knn_k, present.max(initial=0)))
    subset = gallery.embeddings[rows]
    index = build_faiss(subset, choose_index(len(rows), "exact"))
    _, found = search(index, queries.embeddings, depth)
    ranked = np.where(found >= 0, gallery_labels[np.maximum(found, 0)], -1)
    proto, _ = nearest_prototype(queries.embeddings, gallery.prototypes)
    model_classes = list(gallery.meta.get("model_classes", []))
    classifier = np.array([index_of.get(model_classes[k], -2) for k in queries.logits.argmax(1)])
    per_query = {
        **{f"recall@{k}": recall_hits(query_labels, ranked, k) for k in RECALL_KS},
        "MAP@R": average_precision_at_r(query_labels, ranked, sizes),
        f"knn{knn_k}_accuracy": (knn_vote(ranked, knn_k) == query_labels).astype(float),
        "prototype_accuracy": (proto == query_labels).astype(float),
        "classifier_accuracy": (classifier == query_labels).astype(float),
    }
    added = set(classes) - set(model_classes)
    masks = _group_masks(np.array(queries.labels), set(model_classes), added)
    groups: dict[str, Any] = {}
    for group, mask in masks.items():
        if not mask.any():
            continue
        groups[group] = {"queries": int(mask.sum())} | {
            name: bootstrap_mean(values[mask], resamples=resamples, seed=seed)
            for name, values in per_query.items()
        }
    return {
        "gallery_items": len(rows),
        "queries": len(queries.labels),
        "queries_from": queries.description,
        "classes": classes,
        "added_classes": sorted(added, key=classes.index),
        "knn_k": knn_k,
        "groups": groups,
    }


def format_table(report: dict[str, Any]) -> str:
    """Metrics as rows, groups as columns: value [95% CI]."""
    groups = list(report["groups"])
    names = [k for k in report["groups"]["all"] if k != "queries"]
    width = max(len(n) for n in names)
    titles = [f"{g} ({report['groups'][g]['queries']})" for g in groups]
    header = f"{'':<{width}}" + "".join(f"  {title:>24}" for title in titles)
    lines = [
        f"gallery: {report['gallery_items']} items; queries: {report['queries_from']}",
        header,
    ]
    for name in names:
        cells = "".join(
            "  {:>24}".format(
                f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                if (v := report["groups"][g][name])["value"] == v["value"]
                else "n/a"
            )
            for g in groups
        )
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


def evaluate(
    index: str | Path,
    *,
    data: str | Path | None = None,
    split: str | None = None,
    out_dir: str | Path = "reports",
    pictures_dir: str | Path = "pictures",
    knn_k: int = 5,
    resamples: int = 1000,
    seed: int = 0,
    backend: str | None = None,
    settings: EmbedderSettings | None = None,
) -> RetrievalResult:
    """Evaluate the index; write reports/retrieval.json and pictures/embeddings.png."""
    index = Path(index)
    gallery = read_gallery(index)
    settings = settings or EmbedderSettings()
    queries = (
        folder_queries(index, gallery, Path(data), settings, backend)
        if data
        else stored_queries(gallery, split)
    )
    if not queries.labels:
        raise InputError(f"No query image of {data} could be embedded; see the failures above.")
    report = retrieval_metrics(gallery, queries, knn_k=knn_k, resamples=resamples, seed=seed)
    report = {
        "index": str(index),
        "weights": gallery.meta.get("weights"),
        "split_source": gallery.meta.get("split_source"),
        **report,
        "failed": [{"path": p, "error": e} for p, e in queries.failed],
    }
    written = [atomic_write_json(Path(out_dir) / "retrieval.json", report)]
    written.append(
        plot_embeddings(
            queries.embeddings,
            queries.labels,
            Path(pictures_dir) / "embeddings.png",
            title=f"query embeddings (PCA), {len(queries.labels)} images",
        )
    )
    return RetrievalResult(report, format_table(report), written, queries.failed)
