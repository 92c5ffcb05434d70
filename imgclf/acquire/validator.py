"""Decide whether a staged download is a usable image. Runs in worker processes (CPU work).

Order of checks, cheapest first, so hostile input costs little:
1. sniff the format from the bytes (never from the URL or Content-Type): `empty`, `not_image`,
   `unsupported_format`;
2. read width x height from the header and refuse more than `max_pixels` *before* decoding
   (decompression bombs): `too_many_pixels`; refuse a shorter side below `min_side`: `too_small`;
3. decode every pixel: `corrupt`. Pillow's `verify()` accepts a JPEG cut in half and `load()`
   ignores libjpeg's "Corrupt JPEG data" warnings, so JPEGs are decoded by libjpeg-turbo through
   simplejpeg with `strict=True`, which turns those warnings into errors.
Accepted bytes are staged as a temporary file next to their final name (the worker writes it, so
the event loop never blocks on disk); with `resize` the staged file is a JPEG of the upright RGB
image with the longer side at most `resize`.

In a worker process each image has `timeout` seconds: a decoder that hostile bytes keep spinning
in C never returns to Python, so no exception can stop it; a kernel timer (SIGALRM, left at its
default action) ends the worker instead, and `batching` records the image as `validate_timeout`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import simplejpeg
from PIL import Image, UnidentifiedImageError

from imgclf.acquire.layout import stage_file
from imgclf.imaging import ACCEPTED_FORMATS, EXTENSIONS, to_rgb

T = TypeVar("T")
EXIF_ORIENTATION = 0x0112
# Orientations 5-8 rotate by 90 degrees: the upright image has width and height swapped.
_TRANSPOSING = frozenset({5, 6, 7, 8})
RESIZE_QUALITY = 90
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
# Image formats Pillow cannot open here (no plugin), told apart from bytes that are no image:
# (offset, signature) -> name. ISO-BMFF images carry their brand after `ftyp` at offset 4.
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif")
_UNSUPPORTED_SIGNATURES = (
    *((4, b"ftyp" + brand) for brand in _HEIF_BRANDS),  # HEIC / HEIF / AVIF
    (0, b"\xff\x0a"),  # JPEG XL codestream
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n"),  # JPEG XL container
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),  # JPEG 2000
    (0, b"8BPS"),  # Photoshop
)
ORPHAN_POLL_SECONDS = 0.5
# True in a validation worker (`init_worker`), where the per-image timer may end the process.
_time_limited = False


@dataclass(frozen=True)
class ValidationOptions:
    """Limits applied to every image."""

    max_pixels: int = 50_000_000
    min_side: int = 32
    resize: int | None = None
    # Seconds one image may take in a worker process (0: no limit); a 50-megapixel image
    # decodes in about a second, so only a stuck decoder comes near it.
    timeout: float = 60.0


@dataclass(frozen=True)
class Verdict:
    """The outcome for one file: `reason` is empty when the image is accepted."""

    reason: str
    ext: str = ""
    width: int = 0
    height: int = 0
    sha256: str = ""
    size: int = 0
    staged: str = ""  # the temporary file holding the accepted bytes


def init_worker() -> None:
    """Worker process setup: Ctrl-C is the parent's business; our pixel limit replaces Pillow's.

    A worker must also die with its parent: after `kill -9` of the run nobody would ever stop
    it (it waits on a pipe whose writing end it inherited itself).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    use_own_pixel_limit()
    parent = os.getppid()
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    end_process_on_hang()


def end_process_on_hang() -> None:
    """From now on an image that outlives its `timeout` ends this process (see the module
    docstring): for workers, and for a process validating in-line that is restarted and
    retried when it dies (a Ray shard runner)."""
    global _time_limited
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # main thread only, as the timer's use
    _time_limited = hasattr(signal, "setitimer")


def use_own_pixel_limit() -> None:
    """`ValidationOptions.max_pixels` is checked before decoding: Pillow's own limit is off."""
    Image.MAX_IMAGE_PIXELS = None


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL_SECONDS)
    os._exit(1)


def validate_and_stage(
    data: bytes, directory: str, key: str, options: ValidationOptions
) -> Verdict:
    """Validate `data`; if accepted, stage it (or its resized JPEG) as a temporary file.

    The staged path is `Verdict.staged`, in `directory` so the final rename is atomic. Rejected
    bytes never touch the disk.
    """
    verdict, image = _inspect(data, options)
    if image is None:
        return verdict
    with image:
        if options.resize:
            data = _resized_jpeg(image, options.resize)
            with Image.open(io.BytesIO(data)) as resized:
                width, height = resized.size
            digest = hashlib.sha256(data).hexdigest()
            verdict = Verdict("", "jpg", width, height, digest, len(data))
    staged = stage_file(Path(directory), key, data)
    return dataclasses.replace(verdict, staged=str(staged))


def validate_batch(
    items: list[tuple[bytes, str, str, ValidationOptions]],
    validate: Callable[[bytes, str, str, ValidationOptions], Verdict] = validate_and_stage,
) -> list[Verdict]:
    """`validate` (`validate_and_stage`) for several images: one inter-process round trip for
    all of them; in a worker, each image within its `timeout`."""
    return [_within_time_limit(validate, item) for item in items]


def _within_time_limit(
    validate: Callable[[bytes, str, str, ValidationOptions], Verdict],
    item: tuple[bytes, str, str, ValidationOptions],
) -> Verdict:
    return within_time_limit(item[3].timeout, validate, *item)


def within_time_limit(seconds: float, function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`; after `end_process_on_hang`, a call that outlives `seconds` (> 0) ends
    this process (SIGALRM at its default action). Main thread only: the timer is the process's."""
    if not (_time_limited and seconds > 0):
        return function(*args)
    signal.setitimer(signal.ITIMER_REAL, seconds)  # at expiry SIGALRM ends this process
    try:
        return function(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def check_image(data: bytes, options: ValidationOptions) -> Verdict:
    """Validate in-memory bytes without storing anything."""
    verdict, image = _inspect(data, options)
    if image is not None:
        image.close()
    return verdict


def stored_file_intact(path: str, sha256: str, size: int) -> bool:
    """True when the file at `path` has exactly `size` bytes hashing to `sha256`."""
    try:
        if os.stat(path).st_size != size:
            return False
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _inspect(data: bytes, options: ValidationOptions) -> tuple[Verdict, Image.Image | None]:
    """Run every check; on success also return the opened (decoded) Pillow image."""
    if not data:
        return Verdict("empty"), None
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return Verdict("unsupported_format" if is_unsupported_image(data) else "not_image"), None
    except Image.DecompressionBombError:
        return Verdict("too_many_pixels"), None
    except Exception:  # a plugin choking on a broken header: bad data, not a bug
        return Verdict("corrupt"), None
    reason = _check_header(image, options)
    if not reason:
        reason = _decode(image, data)
    if reason:
        image.close()
        return Verdict(reason), None
    width, height = image.size
    if _orientation(image) in _TRANSPOSING:
        width, height = height, width
    ext = EXTENSIONS[image.format]  # type: ignore[index]
    return Verdict("", ext, width, height, hashlib.sha256(data).hexdigest(), len(data)), image


def is_unsupported_image(data: bytes) -> bool:
    """True when `data` starts like an image format that is not accepted (HEIC, AVIF, JPEG XL)."""
    return any(data[offset:].startswith(magic) for offset, magic in _UNSUPPORTED_SIGNATURES)


def _check_header(image: Image.Image, options: ValidationOptions) -> str:
    if image.format not in ACCEPTED_FORMATS:
        return "unsupported_format"
    width, height = image.size
    if width * height > options.max_pixels:
        return "too_many_pixels"
    if min(width, height) < options.min_side:
        return "too_small"
    return ""


def _decode(image: Image.Image, data: bytes) -> str:
    """Decode every pixel; '' when that worked, 'corrupt' otherwise."""
    try:
        if image.format in JPEG_FORMATS:  # an MPO's first picture is a plain JPEG stream
            colorspace = {"L": "GRAY", "CMYK": "CMYK"}.get(image.mode, "RGB")
            simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
        else:
            image.load()  # GIF: the first frame, which is what training uses
    except Exception:  # decoders raise many types on bad data; all mean corrupt
        return "corrupt"
    return ""


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return 1


def _resized_jpeg(image: Image.Image, longer_side: int) -> bytes:
    rgb = to_rgb(image)
    rgb.thumbnail((longer_side, longer_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=RESIZE_QUALITY)
    return buffer.getvalue()
