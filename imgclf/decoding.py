"""Image bytes → uint8 RGB tensor (3, H, W): the pixels of `imaging.open_rgb`, faster for JPEG.

For an ordinary 8-bit JPEG (baseline or progressive, grey or colour) torchvision's libjpeg-turbo
decoder writes the tensor directly, with no PIL image in between and no copy into a tensor, which
is faster (measured: docs/benchmarks.md). Pillow decodes with libjpeg-turbo too, at the same
default settings (accurate integer IDCT, smooth chroma upsampling), so the pixels are the same:
equal on every demo photo, for each of the 8 EXIF orientations, grey and 4:4:4 JPEGs
(tests/test_decoding.py).

Everything else goes through `open_rgb`, so its colour handling, size limit and error messages
stay the only ones: other formats, CMYK / 12-bit / arithmetic-coded / lossless JPEGs, a JPEG whose
orientation is in XMP (Pillow reads it there, torchvision does not), one larger than Pillow's
decompression-bomb limit, and whatever torchvision refuses (truncated or corrupt data).
torchvision marks its image decoders deprecated since 0.29 (in favour of TorchCodec); without
them every image takes the Pillow path, same pixels, slower.
"""

from __future__ import annotations

import warnings

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from imgclf.imaging import open_rgb

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # a torchvision without its image decoders
    decode_jpeg = None

# Shown on every call otherwise; the fallback above covers the removal it announces.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision are deprecated",
    category=DeprecationWarning,
)

# Huffman-coded frames torchvision and Pillow decode alike: baseline, extended, progressive.
_HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)
# Every other start-of-frame marker (lossless, arithmetic coding, hierarchical).
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_START_OF_SCAN = 0xDA


def jpeg_frame(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(frame marker, bit depth, height, width, components) of a JPEG, None if not a JPEG or
    no frame header comes before the image data."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _HUFFMAN_FRAMES or marker in _OTHER_FRAMES:
            if pos + 10 > len(data):
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return marker, data[pos + 4], height, width, data[pos + 9]
        if marker == _START_OF_SCAN:
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _decodes_like_pillow(data: bytes) -> bool:
    """True when torchvision's decoder gives this JPEG exactly the pixels open_rgb gives it."""
    frame = jpeg_frame(data)
    if frame is None:
        return False
    marker, bits, height, width, components = frame
    return (
        marker in _HUFFMAN_FRAMES
        and bits == 8
        and components in (1, 3)
        and height * width <= (Image.MAX_IMAGE_PIXELS or height * width)
        and b"tiff:Orientation" not in data
    )


def decode_rgb(data: bytes) -> torch.Tensor:
    """Image file bytes → upright RGB uint8 tensor (3, H, W), the pixels of `open_rgb(data)`.

    Raises what open_rgb raises for data that is not a readable image.
    """
    if decode_jpeg is not None and _decodes_like_pillow(data):
        try:
            return decode_jpeg(
                # bytearray: torch.frombuffer wants a writable buffer (the copy costs ~1 us).
                torch.frombuffer(bytearray(data), dtype=torch.uint8),
                mode=ImageReadMode.RGB,
                apply_exif_orientation=True,
            )
        except RuntimeError:
            pass  # truncated or corrupt: Pillow decides and words the error
    return F.pil_to_tensor(open_rgb(data))
