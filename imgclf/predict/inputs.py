"""What `--predict` was given: image files, folders of images, http(s) URLs → a flat list of items.

A path that does not exist or a folder without images becomes an item with an error, so it is
reported in line with the others and the rest still run. URLs are fetched with a plain bounded,
timeout-guarded urllib GET (one request per image: no session, cookies or retries to manage).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imgclf import USER_AGENT
from imgclf.dataset.samples import image_files
from imgclf.imaging import IMAGE_SUFFIXES

FETCH_TIMEOUT_S = 15.0
# Refuse bodies above this size: a classifier input is never this large, a wrong URL may be.
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class Item:
    """One image to classify: `source` is a file path or URL; `label` a class index if known."""

    source: str
    label: int | None = None
    error: str | None = None


def is_url(text: str) -> bool:
    """True for http:// and https:// addresses."""
    return text.lower().startswith(("http://", "https://"))


def expand_inputs(arguments: Sequence[str]) -> list[Item]:
    """Items for files, URLs and (recursively, sorted) the images inside folders, in given order.

    Explicitly named files are kept whatever their extension (decoding decides); inside folders
    only image extensions are taken, so a README beside the images is not an error.
    """
    items: list[Item] = []
    for argument in arguments:
        path = Path(argument)
        if is_url(argument) or path.is_file():
            items.append(Item(argument))
        elif path.is_dir():
            images = image_files(path)
            if not images:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                items.append(Item(argument, error=f"folder has no images ({suffixes})"))
            items += [Item(str(image)) for image in images]
        else:
            items.append(Item(argument, error="no such file, folder or http(s) URL"))
    return items


def fetch_url(
    url: str, *, timeout: float = FETCH_TIMEOUT_S, max_bytes: int = MAX_DOWNLOAD_BYTES
) -> bytes:
    """GET `url` and return the body; raises OSError with a short reason on any failure."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise OSError(f"body of {int(declared)} bytes exceeds {max_bytes} bytes")
            body = response.read(max_bytes + 1)
    except urllib.error.HTTPError as error:
        raise OSError(f"HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        # urlopen wraps a timeout while waiting for the answer in URLError too.
        if isinstance(error.reason, TimeoutError):
            raise OSError(f"no answer within {timeout:g} s") from error
        raise OSError(f"unreachable ({error.reason})") from error
    except TimeoutError as error:  # the body stalled after the headers
        raise OSError(f"no answer within {timeout:g} s") from error
    if len(body) > max_bytes:
        raise OSError(f"body exceeds {max_bytes} bytes")
    return body


def read_item(item: Item) -> bytes:
    """The raw bytes of an item's file or URL; raises OSError with a short reason."""
    return fetch_url(item.source) if is_url(item.source) else Path(item.source).read_bytes()
