"""The FAISS index over a gallery of L2-normalised embeddings: which kind, how built, how searched.

Inner product on unit vectors is cosine similarity. Following FAISS's "Guidelines to choose an
index": an exact `IndexFlatIP` while a single query over the whole gallery is fast enough
(EXACT_MAX_ITEMS, measured by benchmarks/search.py), else an inverted file, `IVF<nlist>,Flat`
with nlist = sqrt(N) rounded to a power of two, trained on 64 vectors per list. The guidelines
suggest 4 to 16 * sqrt(N) lists; we take fewer because k-means training cost grows with
nlist squared (64 * nlist training vectors times nlist centroids), so 4,096 lists would train
16 times longer than 1,024 on a machine of a few cores, while 1,024 lists already make a query
scan only nprobe / 1,024 of a million-item gallery. Its
`nprobe` is calibrated at build time: the smallest power of two whose recall@10 against exact
search, on a sample of the gallery's own vectors, reaches RECALL_TARGET.

Result order: descending score; equal scores (duplicate images, tied cosines) in ascending row
order, and the gallery's rows are kept in ascending item id order, so ties go to the lower id.
FAISS's own k-selection does not promise an order among equal scores, so exact search asks for
more neighbours until the k-th score is strictly above the next one, then sorts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from imgclf.errors import InputError

# Exact search up to this many items. Measured with benchmarks/search.py (2-core development
# machine under load, one thread, 576-d, 2026-12-01): one exact query took 3 ms over 10,000
# items, 37 ms over 50,000, 119 ms over 200,000; 50,000 keeps a query within a few tens of ms,
# above it the IVF index answers many times faster (docs/search.md).
EXACT_MAX_ITEMS = 50_000
RECALL_TARGET = 0.95
KINDS = ("auto", "exact", "approximate")
TRAIN_PER_LIST = 64
CALIBRATION_QUERIES = 200
MAX_NPROBE = 256


@dataclass(frozen=True)
class IndexChoice:
    """What to build: `kind` "exact" or "approximate", the index_factory string, and why."""

    kind: str
    factory: str
    reason: str


def nlist_for(count: int) -> int:
    """IVF lists for `count` vectors: sqrt(count), rounded to a power of two, at least 1."""
    return max(1, 2 ** round(math.log2(max(1.0, math.sqrt(count)))))


def choose_index(count: int, kind: str = "auto", exact_max: int = EXACT_MAX_ITEMS) -> IndexChoice:
    """Pick the index for `count` vectors; `kind` forces "exact" or "approximate"."""
    if kind not in KINDS:
        raise InputError(f"Index kind {kind!r} is not one of {', '.join(KINDS)}.")
    if kind == "exact" or (kind == "auto" and count <= exact_max):
        why = "forced" if kind == "exact" else f"{count:,} items <= {exact_max:,}"
        return IndexChoice("exact", "Flat", f"exact IndexFlatIP ({why})")
    nlist = nlist_for(count)
    if count < nlist * 4:
        raise InputError(
            f"An approximate index over {count} items cannot train {nlist} lists; "
            "use --index-kind exact for a gallery this small."
        )
    why = "forced" if kind == "approximate" else f"{count:,} items > {exact_max:,}"
    return IndexChoice("approximate", f"IVF{nlist},Flat", f"approximate IVF{nlist},Flat ({why})")


def as_unit_float32(vectors: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy of `vectors` with every row scaled to length 1."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def build_faiss(embeddings: np.ndarray, choice: IndexChoice, *, seed: int = 0) -> faiss.Index:
    """A FAISS inner-product index holding `embeddings` (N, D) float32 unit rows in row order."""
    count, dim = embeddings.shape
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist
        rng = np.random.default_rng(seed)
        take = min(count, nlist * TRAIN_PER_LIST)
        sample = embeddings[np.sort(rng.choice(count, take, replace=False))]
        index.train(sample)
    # Add in slices: one huge add holds a second copy of the vectors' assignment buffers.
    for start in range(0, count, 100_000):
        index.add(embeddings[start : start + 100_000])
    return index


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set how many inverted lists an IVF query visits (no-op for a flat index)."""
    if isinstance(index, faiss.IndexFlat):
        return
    faiss.extract_index_ivf(index).nprobe = nprobe


def _order_ties(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: sort by (-score, row), drop FAISS's -1 fillers, keep k (pad with -1 / -inf)."""
    out_scores = np.full((len(scores), k), -np.inf, dtype=np.float32)
    out_rows = np.full((len(scores), k), -1, dtype=np.int64)
    for q, (score, row) in enumerate(zip(scores, rows, strict=True)):
        keep = row >= 0
        order = np.lexsort((row[keep], -score[keep]))[:k]
        out_scores[q, : len(order)] = score[keep][order]
        out_rows[q, : len(order)] = row[keep][order]
    return out_scores, out_rows


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows per query and their cosine scores, ties in ascending row order.

    For a flat index the answer is exact, ties at the k-th place included: it widens the
    search until the last kept score is strictly above the first dropped one (or all rows are
    in). An IVF index is searched once with k and its results ordered the same way.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    total = index.ntotal
    k = min(k, total)
    if k < 1 or len(queries) == 0:
        empty = np.zeros((len(queries), max(k, 0)))
        return empty.astype(np.float32), empty.astype(np.int64)
    if not isinstance(index, faiss.IndexFlat):
        scores, rows = index.search(queries, k)
        return _order_ties(scores, rows, k)
    wide = min(total, k + 8)
    while True:
        scores, rows = index.search(queries, wide)
        if wide == total or np.all(scores[:, k - 1] > scores[:, wide - 1]):
            return _order_ties(scores, rows, k)
        wide = min(total, wide * 4)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true k neighbours (rows of `truth`) that `found` contains."""
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True)]
    return float(np.sum(hits) / truth.size)


def calibrate_nprobe(
    index: faiss.Index,
    embeddings: np.ndarray,
    *,
    k: int = 10,
    target: float = RECALL_TARGET,
    queries: int = CALIBRATION_QUERIES,
    seed: int = 0,
) -> tuple[int, float]:
    """The smallest power-of-two nprobe reaching `target` recall@k against exact search.

    Queries are gallery vectors with a little noise (a query image is never exactly a gallery
    image). Returns (nprobe, measured recall); a flat index returns (0, 1.0).
    """
    if isinstance(index, faiss.IndexFlat):
        return 0, 1.0
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(embeddings), min(queries, len(embeddings)), replace=False)
    noise = rng.normal(scale=0.02, size=(len(picks), embeddings.shape[1]))
    sample = as_unit_float32(embeddings[picks] + noise)
    # faiss.knn scans the array in place: no second copy of a large gallery in memory.
    _, truth = faiss.knn(sample, embeddings, k, metric=faiss.METRIC_INNER_PRODUCT)
    nlist = faiss.extract_index_ivf(index).nlist
    nprobe, recall = 1, 0.0
    while True:
        set_nprobe(index, nprobe)
        recall = recall_at(index.search(sample, k)[1], truth)
        if recall >= target or nprobe >= min(nlist, MAX_NPROBE):
            return nprobe, recall
        nprobe *= 2
