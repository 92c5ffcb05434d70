"""Exact search equals brute-force numpy cosine, ties included; approximate recall is measured."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.errors import InputError
from imgclf.search.index import (
    as_unit_float32,
    build_faiss,
    calibrate_nprobe,
    choose_index,
    nlist_for,
    recall_at,
    search,
    set_nprobe,
)


def brute_force(gallery: np.ndarray, queries: np.ndarray, k: int):
    """numpy cosine of unit rows, ordered by (-score, row): the documented tie order."""
    scores = queries @ gallery.T
    rows = np.array([np.lexsort((np.arange(len(gallery)), -s))[:k] for s in scores])
    return np.take_along_axis(scores, rows, axis=1), rows


def gallery_with_ties(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """60 random unit vectors in which rows 5, 17, 33 and 48 are one vector (an image indexed
    four times), and queries that are that vector, other gallery rows, and fresh vectors."""
    rng = np.random.default_rng(seed)
    gallery = as_unit_float32(rng.standard_normal((60, 16)))
    for row in (17, 33, 48):
        gallery[row] = gallery[5]
    queries = np.vstack([gallery[[48, 5, 10]], as_unit_float32(rng.standard_normal((5, 16)))])
    return gallery, queries


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 10, 60])
def test_exact_search_equals_brute_force_with_ties_in_row_order(k):
    gallery, queries = gallery_with_ties()
    index = build_faiss(gallery, choose_index(len(gallery)))
    scores, rows = search(index, queries, k)
    want_scores, want_rows = brute_force(gallery, queries, k)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)


def test_ties_straddling_k_go_to_the_lowest_rows():
    # Four copies of one vector, and k = 2: the two lowest rows win, whatever FAISS's heap did.
    gallery, queries = gallery_with_ties()
    index = build_faiss(gallery, choose_index(len(gallery), "exact"))
    _, rows = search(index, queries[:1], 2)
    assert rows.tolist() == [[5, 17]]
    _, rows = search(index, queries[:1], 4)
    assert rows.tolist() == [[5, 17, 33, 48]]


def test_k_above_the_gallery_returns_every_row_once():
    gallery, queries = gallery_with_ties()
    index = build_faiss(gallery, choose_index(len(gallery)))
    _, rows = search(index, queries, 1000)
    assert rows.shape == (len(queries), len(gallery))
    assert all(sorted(r) == list(range(len(gallery))) for r in rows.tolist())


def test_choice_is_exact_up_to_the_threshold_and_forceable():
    assert choose_index(200, exact_max=200).kind == "exact"
    assert choose_index(201, exact_max=200).factory == f"IVF{nlist_for(201)},Flat"
    assert choose_index(10**6, "exact").kind == "exact"
    assert choose_index(5000, "approximate").kind == "approximate"
    assert nlist_for(1_000_000) == 1024
    with pytest.raises(InputError, match="cannot train"):
        choose_index(3, "approximate")
    with pytest.raises(InputError, match="not one of"):
        choose_index(3, "hnsw")


def test_recall_at_counts_shared_neighbours():
    found = np.array([[1, 2, 3], [4, 5, -1]])
    truth = np.array([[3, 2, 9], [6, 7, 8]])
    assert recall_at(found, truth) == pytest.approx(2 / 6)


def test_approximate_index_reaches_the_recall_target_on_clustered_data():
    rng = np.random.default_rng(1)
    centres = as_unit_float32(rng.standard_normal((40, 32)))
    members = rng.integers(0, 40, 8000)
    gallery = as_unit_float32(centres[members] + rng.normal(scale=0.15, size=(8000, 32)))
    index = build_faiss(gallery, choose_index(len(gallery), "approximate"))
    nprobe, recall = calibrate_nprobe(index, gallery, k=10)
    assert recall >= 0.95 and 1 <= nprobe <= nlist_for(8000)
    set_nprobe(index, nprobe)
    queries = as_unit_float32(centres[rng.integers(0, 40, 100)] + rng.normal(0, 0.15, (100, 32)))
    _, truth = brute_force(gallery, queries, 10)
    _, found = search(index, queries, 10)
    assert recall_at(found, truth) >= 0.9  # fresh queries, not the calibration sample
