"""Pillow helpers shared by every stage that turns image bytes into pixels (no torch here).

One place decides how a file becomes RGB pixels, so the downloader's `--resize`, the training
cache and inference all see the same image: EXIF orientation applied, palette / transparency /
CMYK / 16-bit modes converted to 8-bit RGB, transparent areas composited on white.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

from PIL import Image, ImageOps

# Formats the downloader accepts (Pillow format names). MPO is what Pillow calls a JPEG from a
# camera that appends more pictures (previews, stereo views) after the first one: it is a JPEG.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# File extension written for each accepted format.
EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}
# File name endings read as images when a folder is scanned (compare lower-cased).
IMAGE_SUFFIXES = frozenset({f".{ext}" for ext in EXTENSIONS.values()} | {".jpeg", ".tif"})


def to_rgb(image: Image.Image) -> Image.Image:
    """Return `image` upright (EXIF) as 8-bit RGB; transparency is composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything above 255.
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def pixel_count(data: bytes) -> int | None:
    """width x height read from the header only (nothing is decoded); None when not an image.

    The check to make before decoding untrusted bytes: a 144-megapixel PNG of a few kilobytes
    decodes into gigabytes. Sizes beyond Pillow's own bomb limit count as `sys.maxsize`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return sys.maxsize
    except Exception:  # not an image, or a header Pillow chokes on: decoding will say so
        return None
    return width * height


def open_rgb(source: str | Path | bytes) -> Image.Image:
    """Open a file path or raw bytes, fully decode it and return it as upright RGB."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb(image)
