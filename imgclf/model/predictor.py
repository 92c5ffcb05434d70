"""Predictor: a model spec (classes, preprocessing) plus one engine, and the policy that loads it.

`load_predictor` accepts a weights file (a loaded `WeightsFile` or a `.pth` path, any backend) or
an exported `.onnx` / `.ts` (its own backend; the spec is read from inside the file). For a
weights file with another backend it reuses the exported file next to it when that was exported
from exactly this weights file (sha256 in its spec), else it exports in memory: a stale export is
never used.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgclf.decoding import decode_rgb
from imgclf.errors import InputError
from imgclf.model.engines import Engine, TorchEngine, open_exported
from imgclf.model.export import EXPORTERS, SUFFIXES
from imgclf.model.factory import with_embedding
from imgclf.model.preprocessing import EvalPreset
from imgclf.model.single_image import SingleImageInput, one_torch_thread
from imgclf.model.spec import ModelSpec, file_sha256
from imgclf.model.weights import WeightsFile, load_weights

BACKEND_OF_SUFFIX = {".pth": None, ".onnx": "onnxruntime", ".ts": "torchscript"}
EXPORT_FORMAT = {"onnxruntime": "onnx", "torchscript": "torchscript"}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Predictor:
    """Classes and preprocessing from `spec`, logits from `engine`.

    `tta`: test-time augmentation, the class probabilities averaged over each image and its
    horizontal mirror (two engine calls per batch, on every engine; the training augmentation
    flips, so the mirror is an image the model has learnt to read).
    """

    def __init__(self, spec: ModelSpec, engine: Engine, source: str, *, tta: bool = False):
        self.spec = spec
        self.engine = engine
        self.source = source
        self.tta = tta
        self.preset = EvalPreset(spec.preprocessing)
        self.single_input = SingleImageInput(self.preset)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def backend(self) -> str:
        return self.engine.name

    def preprocess(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """An upright RGB image (PIL, or uint8 (3, H, W)) → the normalised (3, img_size,
        img_size) input tensor (on one torch thread: see one_torch_thread)."""
        with one_torch_thread():
            return self.preset(image)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Class probabilities (B, K) for a preprocessed batch (B, 3, H, W); with `tta`, the
        mean of the batch's and its mirror's."""
        probabilities = softmax(self.engine(batch).astype(np.float64))
        if self.tta:
            mirrored = softmax(self.engine(batch.flip(-1).contiguous()).astype(np.float64))
            probabilities = (probabilities + mirrored) / 2
        return probabilities

    def embed(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B, K) and the penultimate features (B, D) the head reads, not normalised."""
        return self.engine.embed(batch)

    @functools.cached_property
    def embedding_size(self) -> int:
        """D, the size of `embed`'s features (one call on a blank image, the first time)."""
        size = self.spec.preprocessing.img_size
        return int(self.embed(torch.zeros(1, 3, size, size))[1].shape[1])

    def classify(self, source: str | Path | bytes) -> np.ndarray:
        """Class probabilities (K,) of one image file or its bytes: decode, preprocess, model."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        with one_torch_thread():
            batch = self.single_input(decode_rgb(data))
        return self.probabilities(batch)[0]

    def warm_up(self, batch_size: int = 1, calls: int = 3) -> None:
        """Untimed calls, so lazy initialisation never lands in a measured latency.

        Eager torch needs more than one: its first calls at a new shape generate oneDNN
        kernels (measured: docs/benchmarks.md).
        """
        size = self.spec.preprocessing.img_size
        batch = torch.zeros(batch_size, 3, size, size)
        for _ in range(calls):
            self.engine(batch)


def _predictor_from_weights(weights: WeightsFile, backend: str) -> Predictor:
    path = weights.path
    source = str(path) if path else f"in-memory {weights.arch} weights"
    if backend == "torch":
        engine = TorchEngine(with_embedding(weights.build_model(), weights.arch))
        return Predictor(ModelSpec.from_weights(weights), engine, source)
    fmt = EXPORT_FORMAT[backend]
    sha256 = file_sha256(path) if path else ""
    if path is not None:
        exported = path.with_suffix(SUFFIXES[fmt])
        if exported.is_file():
            try:
                engine, spec = open_exported(backend, exported)
            except InputError:
                spec = None
            if spec is not None and spec.source_sha256 == sha256:
                # A file exported before specs carried `tta` says False: the weights decide.
                return Predictor(replace(spec, tta=weights.tta), engine, str(exported))
        print(
            f"note: {exported} is missing or was exported from other weights; exporting in "
            f"memory (keep one with --export {fmt}).",
            file=sys.stderr,
        )
    spec = ModelSpec.from_weights(weights, source_sha256=sha256)
    engine, _ = open_exported(backend, EXPORTERS[fmt](weights.build_model(), spec))
    return Predictor(spec, engine, source)


def load_predictor(
    weights: WeightsFile | str | Path, backend: str | None = None, *, tta: bool | None = None
) -> Predictor:
    """A Predictor for a weights file (loaded or a path) or an exported model; backend None
    picks the file's own (torch for weights); `tta` averages each image with its mirror,
    None: as the file says (on for models trained with flips, see ModelSpec.tta)."""
    predictor = _load_predictor(weights, backend)
    predictor.tta = predictor.spec.tta if tta is None else tta
    return predictor


def _load_predictor(weights: WeightsFile | str | Path, backend: str | None) -> Predictor:
    if isinstance(weights, WeightsFile):
        return _predictor_from_weights(weights, backend or "torch")
    path = Path(weights)
    if path.suffix not in BACKEND_OF_SUFFIX:
        raise InputError(
            f"{path} is neither a weights file (.pth) nor an exported model (.onnx, .ts); "
            "pass --weights weights/<arch>.pth."
        )
    own = BACKEND_OF_SUFFIX[path.suffix]
    if own is None:
        return _predictor_from_weights(load_weights(path), backend or "torch")
    if backend and backend != own:
        raise InputError(
            f"{path} can only run with --backend {own}; for --backend {backend} pass the "
            "weights file (.pth) it was exported from."
        )
    if not path.is_file():
        raise InputError(f"Model file {path} does not exist; export it first with --export.")
    engine, spec = open_exported(own, path)
    return Predictor(spec, engine, str(path))
