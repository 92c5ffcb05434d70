"""What an exported model needs besides its graph: class names and preprocessing.

The spec travels *inside* every exported file (ONNX `metadata_props["imgclf"]`, TorchScript extra
file `imgclf.json`), so an exported model can never be separated from its class list.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from imgclf.model.preprocessing import Preprocessing
from imgclf.model.weights import WeightsFile

SPEC_KEY = "imgclf"
SPEC_FORMAT = "imgclf-model"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Second output (files exported before it have only logits): what the classifier head reads.
EMBEDDING_NAME = "embedding"


@dataclass(frozen=True)
class ModelSpec:
    """Class names and eval preprocessing of a model, plus the weights file it came from;
    `tta`: whether inference averages each image with its mirror unless told otherwise."""

    arch: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    source_sha256: str = ""
    tta: bool = False

    @classmethod
    def from_weights(cls, weights: WeightsFile, source_sha256: str = "") -> ModelSpec:
        """The spec of a loaded weights file; `source_sha256` identifies the file on disk."""
        return cls(
            arch=weights.arch,
            classes=tuple(weights.classes),
            preprocessing=weights.preprocessing,
            source_sha256=source_sha256,
            tta=weights.tta,
        )

    def to_json(self) -> str:
        """JSON text with a format marker and a description of the model's input and output."""
        # The preprocessing keys sit at the top level, as in the weights file.
        payload = {
            "format": SPEC_FORMAT,
            "format_version": 1,
            "arch": self.arch,
            "classes": list(self.classes),
            **self.preprocessing.to_dict(),
            "source_sha256": self.source_sha256,
            "tta": self.tta,
        }
        size = self.preprocessing.img_size
        payload["input"] = (
            f"{INPUT_NAME}: float32 [batch, 3, {size}, {size}], RGB scaled to "
            "0..1 then normalised with mean/std, after resizing the shorter side to resize_size "
            "and centre-cropping img_size"
        )
        payload["output"] = (
            f"{OUTPUT_NAME}: float32 [batch, {len(self.classes)}], in class order; "
            f"{EMBEDDING_NAME}: float32 [batch, D], the penultimate features the classifier "
            "head reads (not normalised)"
        )
        return json.dumps(payload, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        """Parse `to_json` output; raises ValueError when it is not an imgclf spec."""
        payload = json.loads(text)
        if not isinstance(payload, dict) or payload.get("format") != SPEC_FORMAT:
            raise ValueError("not an imgclf model spec")
        return cls(
            arch=payload["arch"],
            classes=tuple(payload["classes"]),
            preprocessing=Preprocessing.from_dict(payload),
            source_sha256=payload.get("source_sha256", ""),
            tta=bool(payload.get("tta", False)),
        )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file: ties an exported model to the exact weights file it came from."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
