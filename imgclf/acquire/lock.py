"""One download at a time per output folder: an exclusive `flock` on `<out>/.download.lock`.

Two runs writing the same manifest would lose one run's rows. The lock is an advisory
`fcntl.flock` on a small file that names its holder (pid, host, start time, command line). The
kernel drops the lock when the holding process dies, however it dies, so a lock file left by a
killed run is stale by construction: the next run simply takes it. The file itself stays (removing
it would let two runs lock two different files of the same name). A forked child (a validation
worker) would share the lock and keep it alive after its parent is killed, so forked children
close their copy of the descriptor at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from imgclf.acquire.layout import LOCK_NAME
from imgclf.errors import InputError

_HELD: set[int] = set()  # lock descriptors of this process, closed in forked children


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


@functools.cache
def _close_locks_in_forked_children() -> None:
    """Register the fork hook once, when a lock is first taken (not as an import side effect)."""
    os.register_at_fork(after_in_child=_close_in_child)


def _holder() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
        "command": " ".join(sys.argv),
    }


def describe_holder(path: Path) -> str:
    """`pid N on HOST since TIME (COMMAND)` from a lock file, or what can be said of it."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"pid {holder['pid']} on {holder['host']} since {holder['started']} "
            f"({holder['command']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


@contextlib.contextmanager
def exclusive_output(out: Path) -> Iterator[None]:
    """Hold the lock of `out` for the block; InputError naming the holder if another run has it."""
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise InputError(
                f"{out} is in use by another download: {describe_holder(path)}; wait for it to "
                "finish or pass another --out."
            ) from None
        _close_locks_in_forked_children()
        _HELD.add(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode("utf-8"), 0)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock


def download_running(out: Path) -> str | None:
    """The holder's description when a download holds the lock of `out` right now, else None."""
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return describe_holder(path)
    finally:
        os.close(fd)
    return None
