"""One uploaded (or fetched) image's bytes → its decoded pixels, or the reason it is refused.

The bytes first pass the downloader's own checks (`acquire.validator.check_image`: format sniffed
from the bytes, pixel limit before decoding, a strict full decode), so the service refuses
exactly what `utils/download_data.py` would refuse, with the same reason word. Accepted bytes are
then decoded by the code `--predict` uses (`decode_rgb`), so both see the same pixels; the
model's eval preset is applied to the batch (imgclf.serve.inference_process).
"""

from __future__ import annotations

import torch

from imgclf.acquire.reasons import REASONS
from imgclf.acquire.validator import ValidationOptions, check_image
from imgclf.decoding import decode_rgb

# The downloader's limits, except the smallest side: a 20-pixel thumbnail is refused as
# training data but can still be classified (--predict classifies it too).
VALIDATION = ValidationOptions(min_side=1)
# Refusals meaning "this is not an image we read" (415); every other reason is 422.
UNSUPPORTED_MEDIA = frozenset({"not_image", "unsupported_format"})


def describe(reason: str) -> str:
    """The reason word with its explanation, e.g. `not_image: the bytes are not an image ...`."""
    explanation = REASONS.get("http_<code>" if reason.startswith("http_") else reason)
    return f"{reason}: {explanation}" if explanation else reason


def decode_upload(
    data: bytes, options: ValidationOptions = VALIDATION
) -> tuple[torch.Tensor | None, str]:
    """The upright RGB pixels (uint8, 3 x H x W) of `data` and "", or None and the downloader's
    reason word for refusing it; never raises for bad bytes."""
    verdict = check_image(data, options)
    if verdict.reason:
        return None, verdict.reason
    try:
        return decode_rgb(data), ""
    except Exception:  # passed the strict check, yet a decoder refused it: still bad data
        return None, "corrupt"


def error_status(reasons: list[str]) -> int:
    """The status of a request none of whose images could be classified: 415 when none is an
    image format we read, 422 when some is an image that is refused (corrupt, too large)."""
    return 415 if all(reason in UNSUPPORTED_MEDIA for reason in reasons) else 422
