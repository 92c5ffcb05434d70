"""One uploaded (or fetched) image's bytes → the model's input tensor, or the reason it is refused.

The bytes first pass the downloader's own checks (`acquire.validator.check_image`: format sniffed
from the bytes, pixel limit before decoding, a strict full decode), so the service refuses
exactly what `utils/download_data.py` would refuse, with the same reason word. Accepted bytes are
then decoded and preprocessed by the code `--predict` uses (`decode_rgb`, the model's eval
preset), so both see the same pixels. Runs in the decoding threads, or on the event loop for a
small JPEG when --inline-max-pixels asks for it (`prepared_inline`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from imgclf.acquire.reasons import REASONS
from imgclf.acquire.validator import ValidationOptions, check_image
from imgclf.decoding import decode_rgb, jpeg_frame
from imgclf.model.predictor import Predictor

# The downloader's limits, except the smallest side: a 20-pixel thumbnail is refused as
# training data but can still be classified (--predict classifies it too).
VALIDATION = ValidationOptions(min_side=1)
# Refusals meaning "this is not an image we read" (415); every other reason is 422.
UNSUPPORTED_MEDIA = frozenset({"not_image", "unsupported_format"})


@dataclass(frozen=True)
class Prepared:
    """The preprocessed image (3, S, S), or the downloader's reason word for refusing it."""

    tensor: torch.Tensor | None
    reason: str
    preprocess_ms: float


def describe(reason: str) -> str:
    """The reason word with its explanation, e.g. `not_image: the bytes are not an image ...`."""
    explanation = REASONS.get("http_<code>" if reason.startswith("http_") else reason)
    return f"{reason}: {explanation}" if explanation else reason


def prepared_inline(data: bytes, max_pixels: int) -> bool:
    """True for a JPEG of at most `max_pixels` pixels (--inline-max-pixels): prepared on the
    event loop itself rather than in a decoding thread."""
    if max_pixels <= 0:
        return False
    frame = jpeg_frame(data)
    return frame is not None and frame[2] * frame[3] <= max_pixels


def prepare_image(predictor: Predictor, data: bytes) -> Prepared:
    """Check, decode and preprocess `data`; never raises for bad bytes."""
    start = time.perf_counter()
    verdict = check_image(data, VALIDATION)
    if verdict.reason:
        return Prepared(None, verdict.reason, 0.0)
    try:
        tensor = predictor.preset(decode_rgb(data))
    except Exception:  # passed the strict check, yet a decoder refused it: still bad data
        return Prepared(None, "corrupt", 0.0)
    return Prepared(tensor, "", (time.perf_counter() - start) * 1e3)


def error_status(reasons: list[str]) -> int:
    """The status of a request none of whose images could be classified: 415 when none is an
    image format we read, 422 when some is an image that is refused (corrupt, too large)."""
    return 415 if all(reason in UNSUPPORTED_MEDIA for reason in reasons) else 422
