"""The entry floor: one module per user command, each argparse plus one package call.

download.py   `python utils/download_data.py`: download or import labelled images
inference.py  `python utils/inference.py`: report, --predict or --export
serve.py      `python utils/serve.py`: the HTTP service

`run_command` is the one way a command ends: bad input (`InputError`) as one line
`<prog>: error: <sentence>` on stderr and exit code 2, Ctrl-C as `<prog>: interrupted` and 130.
utils/*.py and tools/demo.py call it; the training runner, which Catalyst's own command line
drives, ends bad input with the same `imgclf.errors.report_input_error`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from imgclf.errors import EXIT_INTERRUPTED, InputError, report_input_error


def run_command(body: Callable[[], int], *, prog: str, on_interrupt: str = "") -> int:
    """Run `body` and return its exit code, or 2 for InputError and 130 for Ctrl-C.

    `on_interrupt` is said after "interrupted" (e.g. how to resume); no traceback either way.
    """
    try:
        return body()
    except InputError as error:
        return report_input_error(error, prog)
    except KeyboardInterrupt:
        hint = f"; {on_interrupt}" if on_interrupt else ""
        print(f"\n{prog}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
