"""Validation batch functions whose worker really dies, or really hangs, on one input (for the
pool tests)."""

from __future__ import annotations

import os
import signal
import time

from imgclf.acquire.validator import Verdict, validate_and_stage, validate_batch

POISON = b"kill my worker"
HANG = b"hang my worker"


def validate_or_die(items):
    """`validate_batch`, except that bytes equal to POISON SIGKILL the worker process."""
    if any(item[0] == POISON for item in items):
        os.kill(os.getpid(), signal.SIGKILL)
    return validate_batch(items)


def validate_or_hang(items):
    """`validate_batch`, except that validating bytes equal to HANG never returns (the way a
    decoder spinning on hostile bytes would), inside the batch's per-image time limit."""
    return validate_batch(items, validate=_hang_on_marker)


def _hang_on_marker(data, directory, key, options):
    while data == HANG:
        time.sleep(3600)
    return validate_and_stage(data, directory, key, options)


__all__ = ["HANG", "POISON", "Verdict", "validate_or_die", "validate_or_hang"]
