"""decode_rgb gives exactly open_rgb's pixels: through torchvision for ordinary JPEGs, through
Pillow for everything else (and the same errors)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

from imgclf.decoding import _decodes_like_pillow, decode_rgb, jpeg_frame
from imgclf.imaging import open_rgb
from tests.conftest import DEMO_DATA


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real demo photo at an odd size, so that orientation mistakes change the shape."""
    return open_rgb(sorted((DEMO_DATA / "5").glob("*.jpg"))[0]).resize((64, 48))


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def assert_same_pixels(data: bytes) -> None:
    expected = F.pil_to_tensor(open_rgb(data))
    decoded = decode_rgb(data)
    assert decoded.dtype == torch.uint8
    assert decoded.shape == expected.shape
    assert torch.equal(decoded, expected)


def test_demo_photos_take_the_fast_path_with_identical_pixels():
    paths = sorted(DEMO_DATA.rglob("*.jpg"))[::41]  # 51 photos across all ten classes
    assert len(paths) > 40
    for path in paths:
        data = path.read_bytes()
        assert _decodes_like_pillow(data), path
        assert_same_pixels(data)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_matches_pillow(photo, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo, exif=exif.tobytes())
    assert _decodes_like_pillow(data)
    assert_same_pixels(data)


@pytest.mark.parametrize(
    ("mode", "options"),
    [("RGB", {"progressive": True}), ("RGB", {"subsampling": 0, "quality": 95}), ("L", {})],
)
def test_progressive_444_and_grey_jpegs_match_pillow(photo, mode, options):
    data = encode(photo.convert(mode), **options)
    assert _decodes_like_pillow(data)
    assert_same_pixels(data)


def test_cmyk_xmp_orientation_and_other_formats_go_through_pillow(photo):
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    cases = {
        "cmyk": encode(photo.convert("CMYK")),
        "xmp": encode(photo, xmp=xmp),
        "png": encode(photo.convert("RGBA"), "PNG"),
    }
    for name, data in cases.items():
        assert not _decodes_like_pillow(data), name
        assert_same_pixels(data)
    assert decode_rgb(cases["xmp"]).shape == (3, 64, 48)  # Pillow's XMP rotation applied


def test_jpeg_frame_reads_the_frame_header(photo):
    assert jpeg_frame(encode(photo)) == (0xC0, 8, 48, 64, 3)
    assert jpeg_frame(encode(photo, progressive=True))[0] == 0xC2
    assert jpeg_frame(encode(photo.convert("L")))[4] == 1
    assert jpeg_frame(encode(photo, "PNG")) is None
    assert jpeg_frame(b"\xff\xd8\xff") is None


@pytest.mark.parametrize("damage", ["truncated", "bad header", "not an image"])
def test_broken_data_raises_what_open_rgb_raises(photo, damage):
    data = encode(photo)
    data = {
        "truncated": data[: len(data) * 2 // 3],
        "bad header": b"\xff\xd8\xff\xe0 not a jpeg at all",
        "not an image": np.arange(64, dtype=np.uint8).tobytes(),
    }[damage]
    with pytest.raises((OSError, UnidentifiedImageError)) as expected:
        open_rgb(data)
    with pytest.raises(expected.type) as raised:
        decode_rgb(data)
    # Same message, but for the address of the BytesIO Pillow names.
    assert re.sub("0x[0-9a-f]+", "", str(raised.value)) == re.sub(
        "0x[0-9a-f]+", "", str(expected.value)
    )
