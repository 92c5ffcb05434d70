"""The eval preset for one image, written into a reused engine input: `Predictor.classify`'s path.

`EvalPreset` returns a fresh tensor in the image's channels-last layout; the engine then copies
it into the contiguous NCHW layout ONNX Runtime reads. For a batch that is lost in the model time,
for one 224 px image it is not: the preset writing straight into a preallocated (1, 3, S, S)
tensor (its `out=`) took 0.22 ms less per classify() (mobilenet_v3_small, 100x100 photo, 2
cores: 1.44 ms instead of 1.66 ms in the same run).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from imgclf.dataset.presets import EvalPreset


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's intra-op parallelism off inside the block, restored after.

    One image's decoding and preprocessing are too small to split: measured on 2 cores, the
    640x480 photo took 0.88 ms on one torch thread and 1.10 ms on two (100x100: 0.21 and
    0.24 ms). And torch's OpenMP threads spin after parallel work, on the cores ONNX Runtime's
    threads need next (see OnnxRuntimeEngine.single_image_session). torch's thread count is
    process-wide: torch work in other Python threads meanwhile runs on one thread too.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
            size = self.preset.img_size
            buffer = self._local.buffer = torch.empty(1, 3, size, size)
        self.preset(pixels, out=buffer[0])
        return buffer
