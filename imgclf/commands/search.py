"""Command line of `python utils/search.py`: build, query, evaluate, add-class.

The usage text shown by --help is the entry script's docstring, passed in as `description`.
"""

from __future__ import annotations

import argparse
import json
import sys

from imgclf.commands import run_command
from imgclf.errors import EXIT_ITEM_FAILED, EXIT_OK

PROG = "search.py"
DEFAULT_INDEX = "index"


def _common(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--index", default=DEFAULT_INDEX, metavar="DIR", help="index folder (default: %(default)s)"
    )
    add(
        "--backend",
        choices=("torch", "torchscript", "onnxruntime"),
        help="inference engine (default: torch for a .pth, else the exported file's own)",
    )
    add(
        "--batch-size",
        type=int,
        metavar="N",
        help="images per model call (default: 128 for build, else 32)",
    )
    add(
        "--workers",
        type=int,
        metavar="N",
        help="image loading processes beside the model (default: none, a thread per core "
        "loads a batch and runs the model on it; 0: load in the main thread)",
    )
    add(
        "--allow-private-urls",
        action="store_true",
        help="also fetch URLs on loopback, private or link-local addresses (refused by default)",
    )


def parse_args(argv: list[str] | None = None, description: str | None = None):
    """Parse the command line; `description` is the usage text --help prints."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", help="embed a data folder into the index (incremental)")
    build.add_argument(
        "--weights",
        default="weights/mobilenet_v3_small.pth",
        help="weights file (.pth) or an exported .onnx/.ts (default: %(default)s)",
    )
    build.add_argument(
        "--data",
        default="data/images",
        metavar="DIR",
        help="images to index (default: %(default)s)",
    )
    build.add_argument(
        "--index-kind",
        choices=("auto", "exact", "approximate"),
        default="auto",
        help="exact IndexFlatIP, approximate IVF, or auto by gallery size (default: %(default)s)",
    )
    query = commands.add_parser("query", help="nearest gallery images of files, folders, URLs")
    query.add_argument("inputs", nargs="+", metavar="PATH_OR_URL")
    query.add_argument("--k", type=int, default=5, help="neighbours per query (default: 5)")
    query.add_argument("--json", action="store_true", help="print the results as JSON")
    query.add_argument(
        "--verify",
        action="store_true",
        help="also check every index file's sha256 (default: sizes only; build checks all)",
    )
    query.add_argument(
        "--weights", help="model to embed the queries with (default: the index's own)"
    )
    query.add_argument(
        "--pictures", default="pictures", metavar="DIR", help="folder for similar.png (pictures)"
    )
    evaluate = commands.add_parser("evaluate", help="retrieval metrics on held-out images")
    evaluate.add_argument(
        "--data", metavar="DIR", help="query images (default: the index's split)"
    )
    evaluate.add_argument(
        "--split", choices=("train", "valid", "test"), help="index items to query (default: test)"
    )
    evaluate.add_argument("--knn", type=int, default=5, metavar="K", help="kNN vote size (5)")
    evaluate.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="resamples")
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    evaluate.add_argument("--out", default="reports", metavar="DIR", help="for retrieval.json")
    evaluate.add_argument(
        "--pictures", default="pictures", metavar="DIR", help="for embeddings.png"
    )
    add_class = commands.add_parser("add-class", help="a new class from a few images")
    add_class.add_argument("name", metavar="NAME")
    add_class.add_argument("inputs", nargs="+", metavar="DIR_OR_FILES")
    for sub in (build, query, evaluate, add_class):
        _common(sub)
    args = parser.parse_args(argv)
    for name in ("batch_size", "k", "knn", "bootstrap"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be 0 (load in the main process) or more")
    return args


def _failures(failed: list[tuple[str, str]]) -> None:
    for source, reason in failed:
        print(f"failed: {source}: {reason}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Do what `args` ask and print the result; returns the exit code."""
    # Heavy imports after parsing, so --help answers at once.
    from imgclf.predict.batches import DEFAULT_BATCH_SIZE
    from imgclf.search.embedding import BUILD_BATCH_SIZE, EmbedderSettings

    default_batch = BUILD_BATCH_SIZE if args.command == "build" else DEFAULT_BATCH_SIZE
    settings = EmbedderSettings(
        batch_size=args.batch_size or default_batch,
        workers=args.workers,
        block_private=not args.allow_private_urls,
    )
    if args.command == "build":
        from imgclf.search import building

        summary = building.build(
            args.weights,
            args.data,
            args.index,
            kind=args.index_kind,
            backend=args.backend,
            settings=settings,
        )
        print(building.format_build(summary, args.index))
        return EXIT_ITEM_FAILED if summary.report.failed else EXIT_OK
    if args.command == "query":
        from pathlib import Path

        from imgclf.search import pictures, querying

        settings.progress = None
        result = querying.query(
            args.index,
            args.inputs,
            k=args.k,
            weights=args.weights,
            backend=args.backend,
            settings=settings,
            verify=args.verify,
        )
        print(
            json.dumps(result.payload, indent=2)
            if args.json
            else querying.format_query(result.payload)
        )
        picture = pictures.plot_similar(
            result.payload,
            Path(args.pictures) / "similar.png",
            block_private=settings.block_private,
        )
        if picture and not args.json:
            print(f"wrote {picture}")
        return EXIT_ITEM_FAILED if result.failed else EXIT_OK
    if args.command == "evaluate":
        from imgclf.search import evaluation

        result = evaluation.evaluate(
            args.index,
            data=args.data,
            split=args.split,
            out_dir=args.out,
            pictures_dir=args.pictures,
            knn_k=args.knn,
            resamples=args.bootstrap,
            seed=args.seed,
            backend=args.backend,
            settings=settings,
        )
        print(result.text)
        _failures(result.failed)
        print("\nwritten:\n" + "\n".join(f"  {path}" for path in result.written))
        return EXIT_ITEM_FAILED if result.failed else EXIT_OK
    from imgclf.search import classes

    settings.progress = None
    added = classes.add_class_from(
        args.index, args.name, args.inputs, backend=args.backend, settings=settings
    )
    _failures(added.failed)
    print(
        f"added class {args.name!r} from {added.added} image(s) to {args.index}; "
        f"classes: {', '.join(added.classes)}"
    )
    return EXIT_ITEM_FAILED if added.failed else EXIT_OK


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit code 2, no traceback."""
    args = parse_args(argv, description)
    return run_command(
        lambda: run(args),
        prog=PROG,
        on_interrupt="run the same build again to finish it" if args.command == "build" else "",
    )
