"""Image bytes generated in the tests: good images of every accepted kind and the broken ones."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw


def picture(size: tuple[int, int] = (64, 48), seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A small picture with random shapes, different for every seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        radius = rng.randrange(4, 20)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    return image.convert(mode) if mode != "RGB" else image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(picture(size, seed), "JPEG", quality=90)


def png(seed: int = 0) -> bytes:
    return encode(picture(seed=seed), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(picture(seed=11, mode="CMYK"), "JPEG", quality=90)


def png_16bit() -> bytes:
    ramp = Image.linear_gradient("L").resize((64, 48)).convert("I")
    image = ramp.point(lambda value: value * 257).convert("I;16")
    return encode(image, "PNG")


def palette_png_with_transparency() -> bytes:
    image = picture(seed=12).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [picture(seed=20 + index).convert("P") for index in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def webp(seed: int = 13) -> bytes:
    return encode(picture(seed=seed), "WEBP", quality=80)


def bmp() -> bytes:
    return encode(picture(seed=14), "BMP")


def tiff() -> bytes:
    return encode(picture(seed=15), "TIFF")


def exif_rotated_jpeg() -> bytes:
    """Stored 64 wide x 48 high with EXIF orientation 6: upright it is 48 x 64."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(picture((64, 48), seed=16), "JPEG", quality=90, exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = jpeg(seed=17, size=(128, 96))
    return data[: len(data) // 2]


def corrupt_jpeg() -> bytes:
    """Complete JPEG whose scan data has a run of garbage: Pillow's load() accepts it."""
    data = bytearray(jpeg(seed=18, size=(256, 192)))
    rng = random.Random(0)
    middle = len(data) // 2
    for offset in range(middle, middle + 64):
        data[offset] = rng.randrange(256)
    return bytes(data)


def decompression_bomb() -> bytes:
    """A valid PNG header announcing 100,000 x 100,000 pixels in well under a kilobyte."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)


def one_pixel_png() -> bytes:
    return encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG")


def html_page() -> bytes:
    return b"<!doctype html><html><head><title>Not found</title></head><body>gone</body></html>"
