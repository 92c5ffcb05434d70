"""`python utils/search.py query`: the k nearest gallery images and the nearest class prototype.

Inputs are expanded like `--predict` (files, folders searched recursively, http(s) URLs;
imgclf.predict.inputs) and embedded with the weights the index was built with (its sha256 is
checked, so a query is never compared with embeddings of another model). An input that cannot
be read or decoded is a result with an error; the others are still answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.predict.inputs import expand_inputs
from imgclf.search.embedding import EmbedderSettings, embed_items
from imgclf.search.index import search
from imgclf.search.metrics import nearest_prototype
from imgclf.search.model import SearchModel, load_search_model
from imgclf.search.store import ADDED_SPLIT, Gallery, check_dim, check_weights, read_gallery


@dataclass
class QueryResult:
    """JSON-ready results and how many inputs failed."""

    payload: dict[str, Any]
    failed: int


def open_index(
    index: str | Path, weights: str | Path | None, backend: str | None, *, checksums: bool = True
) -> tuple[Gallery, SearchModel]:
    """The verified gallery and the model to embed queries with (the index's own by default);
    `checksums` False checks the files' sizes only (imgclf.search.store)."""
    gallery = read_gallery(index, checksums=checksums)
    model = load_search_model(weights or gallery.meta["weights"], backend)
    verify_gallery(gallery, index, model.info.sha256, model.info.weights, model.predictor)
    return gallery, model


def verify_gallery(
    gallery: Gallery, index: str | Path, sha256: str, weights: str, predictor
) -> None:
    """Refuse (InputError) a gallery made with other weights or of another embedding size."""
    check_weights(gallery.meta, sha256, weights, Path(index))
    check_dim(gallery.meta, predictor.embedding_size, Path(index))


def gallery_file(gallery: Gallery, row: int) -> str:
    """Where gallery item `row` lives: added images as given, the rest under the data root."""
    item = gallery.items[row]
    if item.split == ADDED_SPLIT:
        return item.path
    return str(Path(gallery.meta.get("data_root", ".")) / item.path)


def query(
    index: str | Path,
    inputs: list[str],
    *,
    k: int = 5,
    weights: str | Path | None = None,
    backend: str | None = None,
    settings: EmbedderSettings | None = None,
    verify: bool = False,
) -> QueryResult:
    """Answer every input with its k nearest items, the nearest prototype and the classifier;
    the index's files are checked by size, and by sha256 too with `verify`."""
    gallery, model = open_index(index, weights, backend, checksums=verify)
    items = expand_inputs(inputs)
    settings = settings or EmbedderSettings(progress="embedding" if len(items) > 32 else None)
    embedded = embed_items(model.predictor, items, settings)
    ok = [i for i in range(len(items)) if i not in embedded.errors]
    answered = answer_queries(
        gallery, embedded.embeddings[ok], embedded.logits[ok], model.info.classes, k
    )
    answers = {
        i: {"input": items[i].source, **answer} for i, answer in zip(ok, answered, strict=True)
    }
    results = [
        answers.get(i) or {"input": items[i].source, "error": embedded.errors[i]}
        for i in range(len(items))
    ]
    payload = {
        "index": str(index),
        "weights": model.info.weights,
        "backend": model.predictor.backend,
        "gallery_items": len(gallery.items),
        "k": k,
        "failed": len(embedded.errors),
        "results": results,
    }
    return QueryResult(payload, len(embedded.errors))


def answer_queries(
    gallery: Gallery, queries: np.ndarray, logits: np.ndarray, classes: Sequence[str], k: int
) -> list[dict[str, Any]]:
    """Per unit query embedding: its k nearest items, nearest prototype and the classifier's
    class (from `logits`), as `query --json` answers each input (also POST /search's)."""
    if not len(queries):
        return []
    scores, rows = search(gallery.index, queries, k)
    proto, proto_score = nearest_prototype(queries, gallery.prototypes)
    answers = []
    for n in range(len(queries)):
        best = int(np.argmax(logits[n]))
        shifted = np.exp(logits[n] - logits[n].max())
        answers.append(
            {
                "neighbours": [
                    {
                        "rank": rank + 1,
                        "id": gallery.items[row].id,
                        "score": round(float(score), 6),
                        "label": gallery.items[row].label,
                        "path": gallery_file(gallery, row),
                    }
                    for rank, (row, score) in enumerate(zip(rows[n], scores[n], strict=True))
                    if row >= 0
                ],
                "prototype": {
                    "class": gallery.prototype_classes[int(proto[n])],
                    "score": round(float(proto_score[n]), 6),
                },
                "classifier": {
                    "class": classes[best],
                    "probability": round(float(shifted[best] / shifted.sum()), 6),
                },
            }
        )
    return answers


def format_query(payload: dict[str, Any]) -> str:
    """Per input: the nearest prototype and classifier, then one line per neighbour."""
    lines = []
    for result in payload["results"]:
        if "error" in result:
            lines.append(f"{result['input']}: error: {result['error']}")
            continue
        proto, clf = result["prototype"], result["classifier"]
        lines.append(
            f"{result['input']}: prototype {proto['class']} ({proto['score']:.3f}), "
            f"classifier {clf['class']} ({clf['probability']:.3f})"
        )
        for n in result["neighbours"]:
            lines.append(f"  {n['rank']:>2}. {n['score']:.4f}  {n['label']:<12} {n['path']}")
    done = len(payload["results"]) - payload["failed"]
    summary = f"{done} of {len(payload['results'])} inputs answered"
    if payload["failed"]:
        summary += f", {payload['failed']} failed"
    lines += ["", summary + f" ({payload['gallery_items']} gallery items, {payload['index']})"]
    return "\n".join(lines)
