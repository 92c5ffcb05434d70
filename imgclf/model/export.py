"""Export a weights file to ONNX or TorchScript, with its ModelSpec embedded in the file.

Both answer two outputs: `logits` first (all that older files answer, so readers of the first
output are unaffected), then `embedding`, the penultimate features the classifier head reads,
for the search. ONNX uses torch's default exporter (the `torch.export`-based one, "dynamo"),
opset 18, one dynamic batch axis, and is written as one self-contained file (weights inline,
no `.onnx.data` beside it: our models are far below protobuf's 2 GB limit). TorchScript is a
traced, frozen module with the spec as the extra file `imgclf.json`; upstream deprecates
TorchScript, so its FutureWarnings are silenced here rather than shown to every user of
`--export torchscript`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from imgclf.fileio import atomic_write_bytes
from imgclf.model.factory import with_embedding
from imgclf.model.spec import (
    EMBEDDING_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    SPEC_KEY,
    ModelSpec,
    file_sha256,
)
from imgclf.model.weights import WeightsFile, load_weights

ONNX_OPSET = 18
TORCHSCRIPT_SPEC_FILE = "imgclf.json"
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}
# Largest batch the exported ONNX graph accepts (torch.export needs a bound for the symbol).
MAX_BATCH = 4096


@contextlib.contextmanager
def quiet_torchscript():
    """Silence TorchScript's deprecation warnings (FutureWarning on every jit call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def _example_input(spec: ModelSpec) -> torch.Tensor:
    size = spec.preprocessing.img_size
    return torch.zeros(1, 3, size, size)


def onnx_bytes(model: torch.nn.Module, spec: ModelSpec) -> bytes:
    """The serialized ONNX model of `model` (eval mode) with `spec` in its metadata; outputs
    `logits` and then `embedding` (what the head reads)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(
        with_embedding(model, spec.arch).eval(),
        (_example_input(spec),),
        dynamo=True,
        verbose=False,
        opset_version=ONNX_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME, EMBEDDING_NAME],
        dynamic_shapes=({0: batch},),
    )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, spec.to_json()
    proto.doc_string = f"imgclf {spec.arch} classifier over {len(spec.classes)} classes"
    return proto.SerializeToString()


def torchscript_bytes(model: torch.nn.Module, spec: ModelSpec) -> bytes:
    """A traced and frozen TorchScript module of `model` with `spec` as an extra file; it
    returns (logits, embedding)."""
    module = with_embedding(model, spec.arch).eval()
    with quiet_torchscript(), torch.inference_mode(False), torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.trace(module, _example_input(spec)))
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer, _extra_files={TORCHSCRIPT_SPEC_FILE: spec.to_json()})
    return buffer.getvalue()


EXPORTERS = {"onnx": onnx_bytes, "torchscript": torchscript_bytes}


def export_model(
    weights_path: str | Path, fmt: str, out: str | Path | None = None
) -> tuple[Path, ModelSpec]:
    """Write `weights_path` as `fmt` ("onnx" or "torchscript") next to it, or to `out`.

    Returns the written path and the embedded spec (which records the weights file's sha256).
    """
    weights_path = Path(weights_path)
    weights: WeightsFile = load_weights(weights_path)
    spec = ModelSpec.from_weights(weights, source_sha256=file_sha256(weights_path))
    target = Path(out) if out else weights_path.with_suffix(SUFFIXES[fmt])
    data = EXPORTERS[fmt](weights.build_model(), spec)
    return atomic_write_bytes(target, data), spec
