"""A decoder for the inference process that really kills it, or really hangs, on one input."""

from __future__ import annotations

import os
import signal
import time

from imgclf.serve.uploads import decode_upload
from tests.acquire.crashing import HANG, POISON

__all__ = ["HANG", "POISON", "decode_or_misbehave"]


def decode_or_misbehave(data: bytes, options):
    """`decode_upload`, except that POISON SIGKILLs the process (a decoder crash) and HANG
    never returns (a decoder spinning on hostile bytes)."""
    if data == POISON:
        os.kill(os.getpid(), signal.SIGKILL)
    while data == HANG:
        time.sleep(3600)
    return decode_upload(data, options)
