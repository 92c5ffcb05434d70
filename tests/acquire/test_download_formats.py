"""Valid inputs that were refused: camera MPO JPEGs, HEIC named truthfully, folded X-Robots-Tag."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from imgclf.acquire.fetcher import opted_out
from imgclf.acquire.validator import ValidationOptions, check_image
from imgclf.commands.download import main
from tests.acquire import sample_images as images
from tests.acquire.faults import read_rows, write_list
from tests.support.loopback import LoopbackServer, respond


def mpo() -> bytes:
    """A multi-picture JPEG as cameras write it (a main picture plus a second view)."""
    first = images.picture((64, 48), seed=1)
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[images.picture((64, 48), seed=2)])
    return buffer.getvalue()


def iso_bmff(brand: bytes) -> bytes:
    """The start of a HEIC / AVIF file: an `ftyp` box with `brand`, then a `meta` box."""
    ftyp = struct.pack(">I4s4sI", 24, b"ftyp", brand, 0) + b"mif1" + brand
    return ftyp + struct.pack(">I4s", 16, b"meta") + bytes(8)


def test_mpo_is_accepted_as_jpeg():
    data = mpo()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    verdict = check_image(data, ValidationOptions())
    assert (verdict.reason, verdict.ext, verdict.width, verdict.height) == ("", "jpg", 64, 48)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (iso_bmff(b"heic"), "unsupported_format"),
        (iso_bmff(b"heix"), "unsupported_format"),
        (iso_bmff(b"mif1"), "unsupported_format"),
        (b"\xff\x0a" + bytes(30), "unsupported_format"),  # JPEG XL
        (b"<html><body>not an image</body></html>", "not_image"),
        (struct.pack(">I4s4s", 24, b"ftyp", b"isom") + bytes(12), "not_image"),  # an MP4 video
    ],
)
def test_known_but_unsupported_formats_are_named_so(data, reason):
    assert check_image(data, ValidationOptions()).reason == reason


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["googlebot: noindex, imgclf: noai"], True),  # two header lines folded by a proxy
        (["googlebot: noindex", "imgclf: noai"], True),
        (["imgclf: noindex, noimageai"], True),  # noimageai continues imgclf's list
        (["noindex, otherbot: noai"], False),
        (["otherbot: noindex, noai"], False),  # noai continues otherbot's list
        (["noai, otherbot: noindex"], True),
        (["unavailable_after: Friday, 25-Jun-2010 15:00:00 PST, noai"], True),
        (["IMGCLF: NOAI"], True),
        (["otherbot: noai"], False),
        (["max-image-preview: none"], False),
    ],
)
def test_x_robots_tag_values(values, expected):
    assert opted_out(values) is expected


def test_mpo_and_heic_and_a_folded_opt_out_end_to_end(tmp_path):
    folded = {"X-Robots-Tag": "googlebot: noindex, imgclf: noai"}
    routes = {
        "/camera.jpg": respond(mpo()),
        "/phone.heic": respond(iso_bmff(b"heic"), content_type="image/heic"),
        "/folded.jpg": respond(images.jpeg(seed=3), headers=folded),
    }
    with LoopbackServer(routes) as server:
        urls = write_list(tmp_path / "urls.csv", [(server.url(path), "x") for path in routes])
        assert main(["--urls", str(urls), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    rows = read_rows(tmp_path / "out")
    assert [(row["reason"], row["path"][-4:]) for row in rows] == [
        ("", ".jpg"),
        ("unsupported_format", ""),
        ("opted_out", ""),
    ]
