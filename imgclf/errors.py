"""The one exception type that ends a run with exit code 2.

A bad argument or an unreadable / malformed input file stops the run *before* any work with one
sentence naming the file, line or value and what to do. Per-item failures (a URL, an image) are
never exceptions: they become rows with a reason.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_ITEM_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class InputError(Exception):
    """Bad argument or input file; the message is one sentence shown to the user as is."""


def report_input_error(error: InputError, prog: str) -> int:
    """Print `<prog>: error: <sentence>` on stderr (argparse's own format) and return exit code
    2; `imgclf.commands.run_command` and the training runner both end bad input this way."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT
