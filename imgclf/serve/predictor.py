"""Predictor: a model spec (classes, preprocessing) plus one engine that turns a batch into logits.

Engines: eager torch (channels-last, `torch.inference_mode`), TorchScript, ONNX Runtime (CPU).
`load_predictor` accepts a weights file (`.pth`, any backend) or an exported `.onnx` / `.ts`
(its own backend; the spec is read from inside the file). For a `.pth` with another backend it
reuses the exported file next to it when that was exported from exactly this weights file
(sha256 in its spec), else it exports in memory: a stale export is never used.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgclf.errors import InputError
from imgclf.serve.decoding import decode_rgb
from imgclf.serve.export import (
    EXPORTERS,
    SUFFIXES,
    TORCHSCRIPT_SPEC_FILE,
    quiet_torchscript,
)
from imgclf.serve.single_image import SingleImageInput, one_torch_thread
from imgclf.serve.spec import INPUT_NAME, OUTPUT_NAME, SPEC_KEY, ModelSpec, file_sha256
from imgclf.train.weights import load_weights

BACKENDS = ("torch", "torchscript", "onnxruntime")
BACKEND_OF_SUFFIX = {".pth": None, ".onnx": "onnxruntime", ".ts": "torchscript"}
EXPORT_FORMAT = {"onnxruntime": "onnx", "torchscript": "torchscript"}


class TorchEngine:
    """Eager PyTorch in channels-last memory format (faster convolutions on CPU)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval().to(memory_format=torch.channels_last)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.model(batch.contiguous(memory_format=torch.channels_last)).numpy()


class TorchScriptEngine:
    """A traced, frozen TorchScript module."""

    name = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.module(batch).numpy()


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

        Measured on 2 cores, 224 px, bare call / full classify() of the 100x100 demo JPEG
        (preprocessing on one torch thread, see Predictor.classify), in one run:
          mobilenet_v3_small: spinning 0.60 / 1.00 ms, 1 thread 0.92 / 1.29 ms,
                              2 threads not spinning 1.03 / 1.46 ms;
          resnet18:           spinning 8.4 / 9.5 ms, 1 thread 16.3 / 17.3 ms,
                              2 threads not spinning 8.8 / 9.7 ms.
        A one-image call is a chain of small operators: a sleeping thread woken for each costs
        more than it saves, a spinning one is already there. The price: after each call the
        idle threads keep spinning for a while before they sleep (measured: 34 ms of CPU in the
        second after one mobilenet_v3_small call). In a DataLoader run that would take CPU from
        the decoding workers, so batches keep sleeping threads. Spinning next to torch's own
        OpenMP threads (which spin too after torch's parallel work) is what made it slow
        before (4.9 ms for mobilenet_v3_small): the single-image preprocessing now runs on one
        torch thread.
        """
        if self._single is None:
            self._single = self.new_session(self._model, spinning=True)
            self._model = None
        return self._single

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        session = self.single_image_session() if batch.shape[0] == 1 else self.session
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch.contiguous().numpy()})[0]


Engine = TorchEngine | TorchScriptEngine | OnnxRuntimeEngine


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Predictor:
    """Classes and preprocessing from `spec`, logits from `engine`."""

    def __init__(self, spec: ModelSpec, engine: Engine, source: str) -> None:
        self.spec = spec
        self.engine = engine
        self.source = source
        self.preset = spec.eval_preset()
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
        """Class probabilities (B, K) for a preprocessed batch (B, 3, H, W)."""
        return softmax(self.engine(batch).astype(np.float64))

    def classify(self, source: str | Path | bytes) -> np.ndarray:
        """Class probabilities (K,) of one image file or its bytes: decode, preprocess, model."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        with one_torch_thread():
            batch = self.single_input(decode_rgb(data))
        return self.probabilities(batch)[0]

    def warm_up(self, batch_size: int = 1, calls: int = 3) -> None:
        """Untimed calls, so lazy initialisation never lands in a measured latency.

        Eager torch needs more than one: its first two or three calls at a new shape generate
        oneDNN kernels (measured: about 0.7 s each for mobilenet_v3_small on 2 cores).
        """
        batch = torch.zeros(batch_size, 3, self.spec.img_size, self.spec.img_size)
        for _ in range(calls):
            self.engine(batch)


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
    import io

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


def _engine_from_export(backend: str, source: Path | bytes) -> tuple[Engine, ModelSpec | None]:
    """Engine for an exported model (file or bytes) and, for a file, the spec inside it."""
    if backend == "onnxruntime":
        spec = _read_onnx_spec(source) if isinstance(source, Path) else None
        return OnnxRuntimeEngine(source if isinstance(source, bytes) else str(source)), spec
    module, spec = _load_torchscript(source)
    return TorchScriptEngine(module), spec


def _predictor_from_weights(path: Path, backend: str) -> Predictor:
    weights = load_weights(path)
    if backend == "torch":
        engine = TorchEngine(weights.build_model())
        return Predictor(ModelSpec.from_weights(weights), engine, str(path))
    fmt = EXPORT_FORMAT[backend]
    exported = path.with_suffix(SUFFIXES[fmt])
    sha256 = file_sha256(path)
    if exported.is_file():
        try:
            engine, spec = _engine_from_export(backend, exported)
        except InputError:
            spec = None
        if spec is not None and spec.source_sha256 == sha256:
            return Predictor(spec, engine, str(exported))
    print(
        f"note: {exported} is missing or was exported from other weights; exporting in memory "
        f"(keep one with --export {fmt}).",
        file=sys.stderr,
    )
    spec = ModelSpec.from_weights(weights, source_sha256=sha256)
    engine, _ = _engine_from_export(backend, EXPORTERS[fmt](weights.build_model(), spec))
    return Predictor(spec, engine, str(path))


def load_predictor(path: str | Path, backend: str | None = None) -> Predictor:
    """A Predictor for a weights file or an exported model; backend None picks the file's own."""
    path = Path(path)
    if path.suffix not in BACKEND_OF_SUFFIX:
        raise InputError(
            f"{path} is neither a weights file (.pth) nor an exported model (.onnx, .ts); "
            "pass --weights weights/<arch>.pth."
        )
    own = BACKEND_OF_SUFFIX[path.suffix]
    if own is None:
        return _predictor_from_weights(path, backend or "torch")
    if backend and backend != own:
        raise InputError(
            f"{path} can only run with --backend {own}; for --backend {backend} pass the "
            "weights file (.pth) it was exported from."
        )
    if not path.is_file():
        raise InputError(f"Model file {path} does not exist; export it first with --export.")
    engine, spec = _engine_from_export(own, path)
    return Predictor(spec, engine, str(path))
