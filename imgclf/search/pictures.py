"""The search's pictures: each query beside its neighbours, and a 2-D map of embeddings.

Written atomically as PNG (matplotlib, Agg backend). A picture that cannot show an image (a
gallery file moved away since the build) draws an empty tile with the reason instead.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.fileio import atomic_write_bytes
from imgclf.imaging import open_rgb
from imgclf.predict.inputs import Item, read_item

MAX_QUERIES_SHOWN = 8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def _tile(axis, source: str, title: str, block_private: bool) -> None:
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=8)
    try:
        axis.imshow(open_rgb(read_item(Item(source), block_private=block_private)))
    except Exception as error:  # a picture is never worth failing the command for
        axis.text(0.5, 0.5, f"cannot show\n{type(error).__name__}", ha="center", va="center")


def plot_similar(
    payload: dict[str, Any], path: str | Path, *, block_private: bool = True
) -> Path | None:
    """One row per answered query (at most MAX_QUERIES_SHOWN): the query, then its neighbours
    with label and cosine score. None when no query was answered."""
    answered = [r for r in payload["results"] if "error" not in r][:MAX_QUERIES_SHOWN]
    if not answered:
        return None
    columns = 1 + max(len(r["neighbours"]) for r in answered)
    plt = _pyplot()
    figure, axes = plt.subplots(
        len(answered), columns, figsize=(1.7 * columns, 1.9 * len(answered)), squeeze=False
    )
    for row, result in zip(axes, answered, strict=True):
        proto = result["prototype"]
        title = f"query\n{proto['class']} {proto['score']:.2f}"
        _tile(row[0], result["input"], title, block_private)
        for axis in row[1:]:
            axis.axis("off")
        for axis, neighbour in zip(row[1:], result["neighbours"], strict=False):
            axis.axis("on")
            title = f"{neighbour['label']}  {neighbour['score']:.3f}"
            _tile(axis, neighbour["path"], title, block_private)
    figure.suptitle("query (nearest prototype) and its nearest gallery images (cosine)")
    return _save(figure, path)


def plot_embeddings(
    embeddings: np.ndarray, labels: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """PCA of `embeddings` to 2-D (scikit-learn), one colour per label."""
    from sklearn.decomposition import PCA

    points = PCA(n_components=2, random_state=0).fit_transform(embeddings)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 6))
    names = sorted(set(labels), key=lambda name: (len(name), name))
    colours = plt.get_cmap("tab20")
    labels = np.asarray(labels)
    for n, name in enumerate(names):
        mine = labels == name
        axis.scatter(*points[mine].T, s=10, color=colours(n % 20), label=name, alpha=0.8)
    axis.legend(fontsize=8, markerscale=2, loc="best", ncol=2)
    axis.set_title(title)
    axis.set_xlabel("principal component 1")
    axis.set_ylabel("principal component 2")
    return _save(figure, path)
