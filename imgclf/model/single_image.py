"""The eval preset for one image, written into a reused engine input: `Predictor.classify`'s path.

`EvalPreset` returns a fresh tensor in the image's channels-last layout; the engine then copies
it into the contiguous NCHW layout ONNX Runtime reads. For a batch that copy is lost in the model
time, for one image it is not, so the preset writes straight into a preallocated (1, 3, S, S)
tensor (measured: docs/benchmarks.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from imgclf.model.preprocessing import EvalPreset


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside the block, restored after.

    torch's thread count is process-wide: torch work in other Python threads meanwhile runs on
    `threads` too.
    """
    before = torch.get_num_threads()
    if threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_torch_thread() -> AbstractContextManager[None]:
    """torch's intra-op parallelism off inside the block, restored after (`torch_threads(1)`).

    One image's decoding and preprocessing are too small to split (measured:
    docs/benchmarks.md), and torch's OpenMP threads spin after parallel work, on the cores ONNX
    Runtime's threads need next (see OnnxRuntimeEngine.single_image_session).
    """
    return torch_threads(1)


class SingleImageInput:
    """uint8 RGB (3, H, W) → the normalised (1, 3, img_size, img_size) engine input.

    The returned tensor is this thread's buffer: the next call on the same thread overwrites it.
    """

    def __init__(self, preset: EvalPreset) -> None:
        self.preset = preset
        self._local = threading.local()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            size = self.preset.preprocessing.img_size
            buffer = self._local.buffer = torch.empty(1, 3, size, size)
        self.preset(pixels, out=buffer[0])
        return buffer
