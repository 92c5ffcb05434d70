"""Run the whole imgclf pipeline on the bundled sign-language digits (what `make demo` runs).

    make demo                                   # set up if needed, then this script
    .venv/bin/python tools/demo.py              # the same, without the setup check
    .venv/bin/python tools/demo.py --per-class 20 --config my_quick.yaml   # a quick smoke run

It serves data/demo/sign_language_digits from a throwaway HTTP server on 127.0.0.1, writes the URL
list data/demo/urls/urls.csv (a seeded, stratified 15% split=test and three broken URLs), then
runs, in the project folder:

    python utils/download_data.py --urls data/demo/urls/urls.csv --out data/demo/images
    catalyst-dl run --config configs/config.yaml configs/demo.yaml
    python utils/inference.py

After an interrupted training (Ctrl-C, `kill`, a crash), the same command again keeps the URL
list and the download and resumes the training (the command above plus `--autoresume last`);
after a finished demo, or one stopped before its training, it starts over.

Exit codes: 0 done, 2 bad argument or missing file, 130 interrupted, otherwise the failed
command's own exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgclf.commands import run_command
from imgclf.demo.pipeline import BUNDLED_DATA, PROJECT_ROOT, DemoOptions, run_demo

PROG = "tools/demo.py"


def parse_args(argv: list[str] | None = None) -> DemoOptions:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=BUNDLED_DATA,
        metavar="DIR",
        help="folder of <label>/ image folders to serve (default: %(default)s)",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        metavar="N",
        help="use a seeded sample of N images per class (default: all images)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.15,
        metavar="F",
        help="share of each class marked split=test (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the test split and sample (default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="one more Catalyst config merged after configs/demo.yaml (repeatable; default: none)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=PROJECT_ROOT,
        metavar="DIR",
        help="folder the commands run in, where the outputs land; it needs utils/, configs/ "
        "and imgclf/ (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    return DemoOptions(
        workdir=args.workdir.resolve(),
        data=args.data.resolve(),
        per_class=args.per_class,
        test_fraction=args.test_fraction,
        seed=args.seed,
        extra_configs=tuple(path.resolve() for path in args.config),
    )


def main(argv: list[str] | None = None) -> int:
    return run_command(
        lambda: run_demo(parse_args(argv)),
        prog=PROG,
        on_interrupt="the HTTP server is stopped; rerun the same `make demo` to go on (an "
        "interrupted training resumes, an interrupted download starts over).",
    )


if __name__ == "__main__":
    sys.exit(main())
