"""A validation batch function whose worker really dies on one input (for the pool tests)."""

from __future__ import annotations

import os
import signal

from imgclf.acquire.validator import Verdict, validate_batch

POISON = b"kill my worker"


def validate_or_die(items):
    """`validate_batch`, except that bytes equal to POISON SIGKILL the worker process."""
    if any(item[0] == POISON for item in items):
        os.kill(os.getpid(), signal.SIGKILL)
    return validate_batch(items)


__all__ = ["POISON", "Verdict", "validate_or_die"]
