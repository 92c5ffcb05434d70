"""Read a `torch.save`d file of plain types and tensors, safely, with a one-sentence error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imgclf.errors import InputError


def load_tensor_file(path: str | Path, what: str, fix: str) -> Any:
    """`torch.load(path)` on the CPU with `weights_only=True` (no code from the file runs).

    A file torch cannot read raises InputError "<path> is not a readable <what> (<error
    type>); <fix>". Only the error type is named: torch's own message runs over many lines and
    suggests weights_only=False, which would execute code from an untrusted file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(
            f"{path} is not a readable {what} ({type(error).__name__}); {fix}"
        ) from error
