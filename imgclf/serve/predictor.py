"""Predictor: a model spec (classes, preprocessing) plus one engine that turns a batch into logits.

Engines: eager torch (channels-last, `torch.inference_mode`), TorchScript, ONNX Runtime (CPU).
`load_predictor` accepts a weights file (`.pth`, any backend) or an exported `.onnx` / `.ts`
(its own backend; the spec is read from inside the file). For a `.pth` with another backend it
reuses the exported file next to it when that was exported from exactly this weights file
(sha256 in its spec), else it exports in memory: a stale export is never used.
"""

from __future__ import annotations

import os
import sys
import time
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
from imgclf.serve.single_image import SingleImageInput
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
    """ONNX Runtime CPU sessions with every graph optimisation on: one for batches, and for a
    single image the faster of that one and a one-thread session, measured on first use."""

    name = "onnxruntime"

    # Timed calls per candidate when choosing the single-image session (after one untimed).
    CHOICE_CALLS = 5

    def __init__(self, model: bytes | str) -> None:
        self._model: bytes | str | None = model  # kept until the single-image choice is made
        self.session = self.new_session(model, threads=0)
        self._single = None
        # Intra-op threads of the single-image session once chosen: 1, or 0 for the batch
        # session (ORT's default, one thread per physical core).
        self.single_threads: int | None = None

    @staticmethod
    def new_session(model: bytes | str, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        # ORT's idle threads spin by default; between calls that burns the cores that the
        # preprocessing (and any other process) needs. Measured on 2 cores, 224 px, full
        # classify() of a 100x100 JPEG with 2 threads: no spinning 2.14 ms, spinning 4.9 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def single_image_session(self):
        """The session for batches of one: of the batch session and a one-thread session, the
        one that ran a 224 px image faster here (median of CHOICE_CALLS calls each).

        Why measure: a one-image call of a small network is a chain of tiny operators, and
        handing each to a second thread costs more than it saves. Measured on 2 cores, one
        image, bare call: mobilenet_v3_small 0.92 ms on 1 thread, 1.42 ms on 2 threads;
        resnet18 16.2 ms on 1 thread, 9.0 ms on 2 (README, Benchmarks). Batches keep every
        core (batch 32: mobilenet 41 ms on 1 thread, 25 ms on 2). The choice costs one more
        session and 2 x 6 calls once (mobilenet_v3_small: ~40 ms; resnet18: ~0.3 s).
        """
        if self._single is None:
            candidates = {0: self.session}
            if (os.cpu_count() or 1) > 1:
                candidates[1] = self.new_session(self._model, threads=1)
            image = np.zeros((1, *self._input_shape()), np.float32)
            times: dict[int, list[float]] = {threads: [] for threads in candidates}
            for call in range(self.CHOICE_CALLS + 1):
                for threads, session in candidates.items():  # interleaved: drift hits both
                    start = time.perf_counter()
                    session.run([OUTPUT_NAME], {INPUT_NAME: image})
                    if call:
                        times[threads].append(time.perf_counter() - start)
            self.single_threads = min(times, key=lambda threads: np.median(times[threads]))
            self._single = candidates[self.single_threads]
            self._model = None
        return self._single

    def _input_shape(self) -> tuple[int, ...]:
        """(3, H, W) of the model input (H, W are fixed by the export)."""
        return tuple(self.session.get_inputs()[0].shape[1:])

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
        img_size) input tensor."""
        return self.preset(image)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Class probabilities (B, K) for a preprocessed batch (B, 3, H, W)."""
        return softmax(self.engine(batch).astype(np.float64))

    def classify(self, source: str | Path | bytes) -> np.ndarray:
        """Class probabilities (K,) of one image file or its bytes: decode, preprocess, model."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        return self.probabilities(self.single_input(decode_rgb(data)))[0]

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
