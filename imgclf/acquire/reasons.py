"""The fixed vocabulary of `status` and `reason` values written to `manifest.csv`.

`reason` is empty for `ok` rows and exactly one of the words below otherwise, so a manifest can be
filtered and counted without parsing free text. `http_<code>` stands for any HTTP status that is
neither success nor redirect (`http_404`, `http_500`, `http_429`, ...).
"""

from __future__ import annotations

OK = "ok"
FAILED = "failed"
DUPLICATE = "duplicate"
STATUSES = (OK, FAILED, DUPLICATE)

REASONS: dict[str, str] = {
    "invalid_url": "the URL cannot be parsed or has no host",
    "url_too_long": "the URL is longer than 8192 characters (the manifest keeps a shortened form)",
    "unsupported_scheme": "the scheme is not http or https (also after a redirect)",
    "blocked_private": "--block-private: the host has no globally routable address (loopback, "
    "private, CGNAT, link-local, multicast, reserved; checked on the address connected to)",
    "http_<code>": "the server answered with this HTTP status (e.g. http_404, http_500, http_429)",
    "too_many_redirects": "more than 5 redirects, or a redirect loop",
    "timeout": "connect or total timeout (--connect-timeout, --timeout)",
    "connection": "the connection failed or was reset, or the host name did not resolve",
    "incomplete": "the body ended before the length the server announced",
    "bad_response": "not valid HTTP: bad status line or headers, more bytes than Content-Length",
    "too_large": "the body is larger than --max-bytes (announced or while streaming)",
    "opted_out": "X-Robots-Tag says noai / noimageai (switch off with --ignore-opt-out)",
    "empty": "the body (or imported file) is empty",
    "unreadable": "--import: the file or archive member cannot be read (bad CRC, I/O error)",
    "not_image": "the bytes are not an image (e.g. an HTML page served as image/jpeg)",
    "unsupported_format": "an image format other than JPEG, PNG, WebP, GIF, BMP or TIFF",
    "too_many_pixels": "width x height above --max-pixels (checked before decoding: bombs)",
    "too_small": "the shorter side is below --min-side",
    "corrupt": "the image does not decode completely (truncated or corrupt data)",
    "worker_crashed": "validating the image killed its worker process twice (decoder crash, "
    "out of memory); the run went on with a fresh worker",
    "validate_timeout": "validating the image took longer than --validate-timeout seconds, "
    "twice (a decoder stuck on hostile bytes); its worker was replaced and the run went on",
    "duplicate": "the same bytes were already stored for an earlier row (see duplicate_of)",
}

# Failures worth another attempt: the next one may succeed. Any other 4xx fails at once.
RETRYABLE_REASONS = frozenset({"timeout", "connection", "incomplete", "http_429"})


def http_reason(status: int) -> str:
    """The reason word for an HTTP status code, e.g. 404 -> `http_404`."""
    return f"http_{status}"


def is_retryable(reason: str) -> bool:
    """True for failures that may go away on a retry: network trouble, 429 and 5xx."""
    if reason in RETRYABLE_REASONS:
        return True
    return reason.startswith("http_5")


def is_known_reason(reason: str) -> bool:
    """True when `reason` belongs to the documented vocabulary."""
    if reason.startswith("http_"):
        return reason[5:].isdigit() and len(reason) == 8
    return reason in REASONS
