"""Run a command that sees a folder read-only: real EACCES / EROFS, not a mock.

Not root: the folder's write bits are cleared. Root ignores those, so the command runs in its own
mount namespace where the folder is bind-mounted read-only (gone when the command ends). Where
neither works the calling test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def read_only_wrapper(folder: Path) -> tuple[str, ...]:
    """A command prefix under which `folder` is read-only (`()` when chmod is enough)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ()
    unshare = shutil.which("unshare")
    if not unshare or subprocess.run([unshare, "-m", "true"], capture_output=True).returncode:
        pytest.skip("root without mount namespaces: cannot make a folder read-only")
    script = (
        f'mount --bind "{folder}" "{folder}" && mount -o remount,ro,bind "{folder}" && exec "$@"'
    )
    return (unshare, "-m", "sh", "-c", script, "sh")
