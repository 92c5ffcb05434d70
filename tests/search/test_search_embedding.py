"""The search's embeddings are the model's features of exactly the pixels inference classifies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclf.decoding import decode_rgb
from imgclf.predict.inputs import Item
from imgclf.search.embedding import EmbedderSettings, embed_items
from imgclf.search.index import as_unit_float32
from imgclf.search.model import load_search_model


@pytest.mark.parametrize("workers", [None, 0, 2])
def test_embeddings_are_the_inference_preprocessing_through_the_model(
    fitted_weights, tiny_root, workers
):
    """embed_items (in lanes, the default; in-process; beside loader processes) gives bit for
    bit the features of the images decoded and preprocessed one at a time, as
    Predictor.classify does, through the same engine in batches of the same size."""
    predictor = load_search_model(fitted_weights).predictor
    paths = sorted(tiny_root.rglob("*.jpg"))
    batch = 8
    settings = EmbedderSettings(batch_size=batch, workers=workers, progress=None)
    embedded = embed_items(predictor, [Item(str(path)) for path in paths], settings)
    assert not embedded.errors
    one_at_a_time = [predictor.preprocess(decode_rgb(path.read_bytes())) for path in paths]
    for start in range(0, len(paths), batch):
        rows = slice(start, start + batch)
        logits, features = predictor.embed(torch.stack(one_at_a_time[rows]))
        assert np.array_equal(embedded.embeddings[rows], as_unit_float32(features))
        assert np.array_equal(embedded.logits[rows], logits)
