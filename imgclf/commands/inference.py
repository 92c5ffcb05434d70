"""Command line of `python utils/inference.py`: report, predict or export.

The usage text shown by --help is the entry script's docstring (one copy, with the exact command
lines), passed in as `description`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imgclf.commands import run_command
from imgclf.commands.paths import check_writable_file, check_writable_folder
from imgclf.errors import EXIT_ITEM_FAILED, EXIT_OK

PROG = "inference.py"


def parse_args(
    argv: list[str] | None = None, description: str | None = None
) -> argparse.Namespace:
    """Parse the command line; `description` is the usage text --help prints above the options."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--weights",
        default="weights/mobilenet_v3_small.pth",
        help="weights file written by training (default: %(default)s); "
        "--predict also takes an exported .onnx or .ts",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--predict",
        nargs="+",
        metavar="PATH",
        help="image files, folders (searched recursively) or http(s) URLs",
    )
    mode.add_argument(
        "--export",
        choices=("onnx", "torchscript"),
        help="write <weights>.onnx or .ts next to the weights file (or to --export-to)",
    )
    add(
        "--export-to",
        metavar="PATH",
        help="--export: the file to write instead of the one next to the weights",
    )
    add(
        "--allow-private-urls",
        action="store_true",
        help="--predict: also fetch URLs on loopback, private or link-local addresses "
        "(refused by default, as the downloader's --block-private does)",
    )
    add(
        "--backend",
        # imgclf.model.engines.BACKENDS, spelled out: importing it would load torch for --help.
        choices=("torch", "torchscript", "onnxruntime"),
        help="inference engine (default: torch for a .pth, else the exported file's own)",
    )
    add(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time augmentation: average each image's probabilities with its mirror's "
        "(report and --predict; twice the model calls). Default: as the weights file says, "
        "on for models trained with horizontal flips (export.tta)",
    )
    add(
        "--data",
        metavar="DIR",
        help="report on this folder (<label>/ folders or manifest.csv) instead of the split "
        "stored in the weights",
    )
    add(
        "--split",
        choices=("train", "valid", "test"),
        help="part to report on (default: test when stored, else valid)",
    )
    add(
        "--out",
        default="reports",
        metavar="DIR",
        help="folder for metrics.json and predictions.csv (default: %(default)s)",
    )
    add(
        "--pictures",
        default="pictures",
        metavar="DIR",
        help="folder for the confusion matrices and the errors gallery (default: %(default)s)",
    )
    add(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% confidence intervals (default: %(default)s)",
    )
    add(
        "--seed",
        type=int,
        default=0,
        help="seed of the bootstrap and the baseline simulation (default: %(default)s)",
    )
    add(
        "--topk",
        type=int,
        default=5,
        metavar="K",
        help="classes shown per image with --predict (default: %(default)s)",
    )
    add("--json", action="store_true", help="--predict: print the results as JSON")
    add(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="images per model call (default: %(default)s)",
    )
    add(
        "--workers",
        type=int,
        metavar="N",
        help="image loading processes (default: one per core, at most 4)",
    )
    args = parser.parse_args(argv)
    for name in ("bootstrap", "topk", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be 0 (load in the main process) or more")
    if args.export_to and not args.export:
        parser.error("--export-to needs --export onnx or --export torchscript")
    return args


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that cannot be written (InputError, one sentence)."""
    if args.export:
        check_writable_file(export_target(args), "--export-to" if args.export_to else "--export")
    elif not args.predict:
        check_writable_folder(args.out, "--out")
        check_writable_folder(args.pictures, "--pictures")


def export_target(args: argparse.Namespace) -> Path:
    """Where --export writes: --export-to, else next to the weights with the format's suffix."""
    from imgclf.model.export import SUFFIXES  # loads torch: not at import, for a quick --help

    if args.export_to:
        return Path(args.export_to)
    return Path(args.weights).with_suffix(SUFFIXES[args.export])


def run(args: argparse.Namespace) -> int:
    """Do what `args` ask and print the result; returns the exit code."""
    check_outputs(args)  # before the heavy imports and any work: a bad output fails at once
    # Heavy imports after parsing, so --help answers at once.
    from imgclf.evaluate import evaluation
    from imgclf.model import export
    from imgclf.predict import prediction

    if args.export:
        path, spec = export.export_model(args.weights, args.export, export_target(args))
        print(f"wrote {path} ({spec.arch}, {len(spec.classes)} classes, preprocessing embedded)")
        return EXIT_OK
    if args.predict:
        result = prediction.predict_paths(
            args.weights,
            args.predict,
            backend=args.backend,
            topk=args.topk,
            batch_size=args.batch_size,
            workers=args.workers,
            tta=args.tta,
            block_private=not args.allow_private_urls,
        )
        text = json.dumps(result.payload, indent=2)
        print(text if args.json else prediction.format_predictions(result.payload))
        return EXIT_ITEM_FAILED if result.failed else EXIT_OK
    result = evaluation.evaluate(
        args.weights,
        data=args.data,
        split=args.split,
        out_dir=args.out,
        pictures_dir=args.pictures,
        backend=args.backend,
        batch_size=args.batch_size,
        workers=args.workers,
        resamples=args.bootstrap,
        seed=args.seed,
        tta=args.tta,
    )
    print(result.text)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    print("\nwritten:\n" + "\n".join(f"  {path}" for path in result.written))
    return EXIT_ITEM_FAILED if result.errors else EXIT_OK


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit code 2, no traceback."""
    args = parse_args(argv, description)
    return run_command(lambda: run(args), prog=PROG)
