"""Inference engines: each turns a preprocessed batch (B, 3, H, W) into logits (B, K), and with
`embed` into (logits, embedding (B, D)), the penultimate features the head reads (the search's
embeddings). Files exported before the embedding output existed still give logits; `embed`
on them says to export again.

Eager torch (channels-last, `torch.inference_mode`), TorchScript, ONNX Runtime (CPU). An engine
knows nothing of classes or preprocessing (that is the `ModelSpec`'s job); `open_exported` opens
an exported model (file or bytes) as its engine and reads the spec the file carries.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from imgclf.errors import InputError
from imgclf.model.export import TORCHSCRIPT_SPEC_FILE, quiet_torchscript
from imgclf.model.factory import WithEmbedding
from imgclf.model.spec import EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAME, SPEC_KEY, ModelSpec

BACKENDS = ("torch", "torchscript", "onnxruntime")


def _no_embedding(kind: str, fmt: str) -> InputError:
    return InputError(
        f"This {kind} model has no embedding output (exported before imgclf had one); export "
        f"it again with: python utils/inference.py --export {fmt}"
    )


def _logits(output) -> torch.Tensor:
    """The logits of a one-output (older file, plain model) or two-output module."""
    return output[0] if isinstance(output, tuple) else output


class TorchEngine:
    """Eager PyTorch in channels-last memory format (faster convolutions on CPU); `embed`
    needs the model wrapped by imgclf.model.factory.with_embedding."""

    name = "torch"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval().to(memory_format=torch.channels_last)

    def _run(self, batch: torch.Tensor):
        with torch.inference_mode():
            return self.model(batch.contiguous(memory_format=torch.channels_last))

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return _logits(self._run(batch)).numpy()

    def embed(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(self.model, WithEmbedding):
            raise TypeError("TorchEngine.embed needs a model wrapped by with_embedding")
        logits, embedding = self._run(batch)
        return logits.numpy(), embedding.numpy()


class TorchScriptEngine:
    """A traced, frozen TorchScript module."""

    name = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return _logits(self.module(batch)).numpy()

    def embed(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            output = self.module(batch)
        if not isinstance(output, tuple):
            raise _no_embedding("TorchScript", "torchscript")
        return output[0].numpy(), output[1].numpy()


class OnnxRuntimeEngine:
    """ONNX Runtime CPU sessions with every graph optimisation on: batches run on one thread
    per core that sleeps when idle; a single image on a session whose idle threads spin."""

    name = "onnxruntime"

    def __init__(self, model: bytes | str) -> None:
        self._model: bytes | str | None = model  # kept until the single-image session exists
        self.session = self.new_session(model)
        self._single = None

    @staticmethod
    def new_session(model: bytes | str, *, threads: int = 0, spinning: bool = False):
        """A CPU session with `threads` intra-op threads (0: ORT's default, one per core)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def single_image_session(self):
        """The session for batches of one, created on first use (ORT's defaults: one thread
        per core, idle threads spinning).

        A one-image call is a chain of small operators: a sleeping thread woken for each costs
        more than it saves, a spinning one is already there. Batches keep sleeping threads, so
        that spinning does not take CPU from the decoding workers of a DataLoader run
        (measurements: docs/benchmarks.md, ONNX Runtime threads).
        """
        if self._single is None:
            self._single = self.new_session(self._model, spinning=True)
            self._model = None
        return self._single

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        session = self.single_image_session() if batch.shape[0] == 1 else self.session
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch.contiguous().numpy()})[0]

    def embed(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if EMBEDDING_NAME not in {output.name for output in self.session.get_outputs()}:
            raise _no_embedding("ONNX", "onnx")
        session = self.single_image_session() if batch.shape[0] == 1 else self.session
        logits, embedding = session.run(
            [OUTPUT_NAME, EMBEDDING_NAME], {INPUT_NAME: batch.contiguous().numpy()}
        )
        return logits, embedding


Engine = TorchEngine | TorchScriptEngine | OnnxRuntimeEngine


def _read_onnx_spec(path: Path) -> ModelSpec:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        props = {entry.key: entry.value for entry in model.metadata_props}
        return ModelSpec.from_json(props[SPEC_KEY])
    except Exception as error:
        raise InputError(
            f"{path} is not an ONNX model exported by imgclf ({type(error).__name__}: {error}); "
            "export one with: python utils/inference.py --export onnx"
        ) from error


def _load_torchscript(source: Path | bytes) -> tuple[torch.jit.ScriptModule, ModelSpec]:
    extra = {TORCHSCRIPT_SPEC_FILE: ""}
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        with quiet_torchscript():
            module = torch.jit.load(handle, map_location="cpu", _extra_files=extra)
        return module, ModelSpec.from_json(extra[TORCHSCRIPT_SPEC_FILE])
    except Exception as error:
        raise InputError(
            f"{source if isinstance(source, Path) else 'the model'} is not a TorchScript model "
            f"exported by imgclf ({type(error).__name__}); "
            "export one with: python utils/inference.py --export torchscript"
        ) from error


def open_exported(backend: str, source: Path | bytes) -> tuple[Engine, ModelSpec | None]:
    """Engine for an exported model (file or bytes) and, for a file, the spec inside it."""
    if backend == "onnxruntime":
        spec = _read_onnx_spec(source) if isinstance(source, Path) else None
        return OnnxRuntimeEngine(source if isinstance(source, bytes) else str(source)), spec
    module, spec = _load_torchscript(source)
    return TorchScriptEngine(module), spec
