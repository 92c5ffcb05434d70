"""The model behind an index: a Predictor plus the identity the index records.

A weights file (`.pth`) runs on any backend; an exported `.onnx` / `.ts` on its own. The identity
is the weights file's sha256 either way (an export records the sha256 of the weights it came
from), so an index built with `--backend torch` answers queries run through ONNX Runtime, and an
index built with other weights is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.errors import InputError
from imgclf.model.predictor import Predictor, load_predictor
from imgclf.model.spec import file_sha256
from imgclf.model.weights import load_weights
from imgclf.search.gallery import ModelInfo


@dataclass
class SearchModel:
    """A Predictor, the ModelInfo an index stores, and the split stored with the weights."""

    predictor: Predictor
    info: ModelInfo
    stored_split: dict[str, Any] = field(default_factory=dict)


def load_search_model(weights: str | Path, backend: str | None = None) -> SearchModel:
    """Load `weights` (.pth, .onnx or .ts) for embedding on `backend` (None: the file's own)."""
    path = Path(weights)
    if path.suffix == ".pth":
        loaded = load_weights(path)
        predictor = load_predictor(loaded, backend)
        sha256, split = file_sha256(path), loaded.split
    else:
        predictor = load_predictor(path, backend)
        sha256, split = predictor.spec.source_sha256, {}
        if not sha256:
            raise InputError(
                f"{path} does not record the weights file it was exported from; export it "
                "again with: python utils/inference.py --export onnx|torchscript"
            )
    info = ModelInfo(str(path), sha256, predictor.spec.arch, tuple(predictor.classes))
    return SearchModel(predictor, info, split or {})
