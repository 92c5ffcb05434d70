"""The self-contained weights file: everything inference needs, in one `torch.save`d dict.

Written once at the end of training (`weights/<arch>.pth`), read by evaluation, prediction and
export. Only plain types and tensors are stored, so it loads with `weights_only=True`. In memory
the four preprocessing keys are one `Preprocessing`; on disk they stay top-level keys, so every
file written before that (the shipped weights/*.pth) loads unchanged.

Keys (format_version 1):
    format, format_version  "imgclf-weights", 1
    arch, classes           architecture name, class names in index order
    state_dict              the model's tensors (eval-ready, CPU)
    img_size, resize_size   eval preprocessing (imgclf.model.preprocessing.Preprocessing):
    mean, std               resize the shorter side, centre-crop img_size, normalise
    split                   {"root": data root, "parts": {part: [[path, label], ...]}}, parts
                            "train", "valid", "test" ("test" may be empty), paths relative to root
    class_counts            {"train": {class: count}, ...}: for the random baseline
    tta                     true: inference averages each image with its mirror by default
                            (trained with flips; export.tta); absent in older files: false
    metrics                 final validation metrics, e.g. {"f1_macro": 0.98, "accuracy": 0.98}
    config                  the merged Catalyst config (plain dict)
    versions                library versions ({"torch": ..., "torchvision": ..., "catalyst": ...})
    created                 ISO 8601 UTC time of writing
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.errors import InputError
from imgclf.fileio import atomic_write_bytes
from imgclf.model.factory import build_model
from imgclf.model.preprocessing import Preprocessing
from imgclf.model.tensorfile import load_tensor_file

FORMAT = "imgclf-weights"
FORMAT_VERSION = 1


@dataclass
class WeightsFile:
    """In-memory form of a weights file (see the module docstring for each field)."""

    arch: str
    classes: list[str]
    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing
    split: dict[str, Any] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    tta: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    # Where load_weights read it from (not stored): lets a Predictor find exports beside it.
    path: Path | None = field(default=None, compare=False, repr=False)

    def build_model(self) -> nn.Module:
        """The model with these weights loaded, in eval mode."""
        model = build_model(self.arch, len(self.classes))
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_weights(path: str | Path, weights: WeightsFile) -> Path:
    """Write `weights` to `path` atomically, stamping the format and creation time."""
    payload = {k: v for k, v in asdict(weights).items() if k not in ("preprocessing", "path")}
    payload.update(weights.preprocessing.to_dict())
    payload["state_dict"] = {k: v.detach().cpu() for k, v in weights.state_dict.items()}
    payload["created"] = weights.created or datetime.now(timezone.utc).isoformat(
        timespec="seconds"
    )
    payload.update(format=FORMAT, format_version=FORMAT_VERSION)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_weights(path: str | Path) -> WeightsFile:
    """Read a weights file; a missing or foreign file raises InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"Weights file {path} does not exist; train first "
            "(catalyst-dl run --config configs/config.yaml) or pass --weights."
        )
    payload = load_tensor_file(
        path, "imgclf weights file", "pass a weights/<arch>.pth written by training."
    )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(
            f"{path} is not an imgclf weights file (no '{FORMAT}' marker); "
            "pass a weights/<arch>.pth written by training."
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path} has weights format version {payload.get('format_version')}, "
            f"this imgclf reads version {FORMAT_VERSION}; retrain or upgrade imgclf."
        )
    fields = WeightsFile.__dataclass_fields__
    kwargs = {k: v for k, v in payload.items() if k in fields}
    kwargs.pop("path", None)
    return WeightsFile(**kwargs, preprocessing=Preprocessing.from_dict(payload), path=path)
