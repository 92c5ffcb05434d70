"""Command line of `python utils/serve.py`: options → ServiceSettings → load the model → serve.

The model is loaded before the server starts listening, so a bad weights file ends the command
with one sentence and exit code 2 instead of a service that never becomes ready.
"""

from __future__ import annotations

import argparse

from imgclf.commands import run_command
from imgclf.errors import EXIT_OK
from imgclf.serve import settings as defaults
from imgclf.serve.settings import ServiceSettings

PROG = "serve.py"


def parse_args(argv: list[str] | None = None, description: str | None = None) -> ServiceSettings:
    """The settings the command line asks for; bad values end with exit code 2."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--weights",
        default=ServiceSettings.weights,
        help="weights file (.pth) or exported model (.onnx, .ts) (default: %(default)s)",
    )
    add(
        "--backend",
        choices=("torch", "torchscript", "onnxruntime"),
        help="inference engine (default: torch for a .pth, else the exported file's own)",
    )
    add(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each image with its mirror (twice the model calls); default: as the "
        "weights file says, like utils/inference.py",
    )
    add("--index", metavar="DIR", help="search index folder (enables POST /search)")
    add("--host", default=ServiceSettings.host, help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=ServiceSettings.port, help="port (default: %(default)s)")
    add(
        "--max-batch-size",
        type=int,
        default=defaults.DEFAULT_MAX_BATCH_SIZE,
        metavar="N",
        help="most images per engine call; with several inference processes each batch also "
        "takes at most its share of the images in flight (default: %(default)s)",
    )
    add(
        "--max-wait-ms",
        type=float,
        default=defaults.DEFAULT_MAX_WAIT_MS,
        metavar="MS",
        help="longest a batch waits to grow, while requests are still being received or "
        "another inference process is busy (default: %(default)s)",
    )
    add(
        "--max-queue",
        type=int,
        default=defaults.DEFAULT_MAX_QUEUE,
        metavar="N",
        help="requests in progress at once; more get 503 + Retry-After (default: %(default)s)",
    )
    add(
        "--max-body-bytes",
        type=int,
        default=defaults.DEFAULT_MAX_BODY_BYTES,
        metavar="BYTES",
        help="largest request body; larger gets 413 (default: %(default)s)",
    )
    add(
        "--max-images",
        type=int,
        default=defaults.DEFAULT_MAX_IMAGES,
        metavar="N",
        help="most images in one request; more gets 422 (default: %(default)s)",
    )
    add(
        "--deadline-ms",
        type=int,
        default=defaults.DEFAULT_DEADLINE_MS,
        metavar="MS",
        help="longest a request may take, upload included; then 504 (default: %(default)s)",
    )
    add(
        "--topk",
        type=int,
        default=ServiceSettings.topk,
        metavar="K",
        help="classes per image unless the request asks (?topk=) (default: %(default)s)",
    )
    add(
        "--inference-processes",
        type=int,
        default=0,
        metavar="N",
        help="processes decoding and running batches side by side (default: 2, 1 on one core)",
    )
    add(
        "--engine-threads",
        type=int,
        default=0,
        metavar="N",
        help="torch threads of each inference process (default: cores - 1 shared out, at least 1)",
    )
    add(
        "--allow-urls",
        action="store_true",
        help='accept a JSON body {"urls": [...]}: fetched with the downloader\'s safeguards',
    )
    add(
        "--allow-private-urls",
        action="store_true",
        help="with --allow-urls, also fetch from loopback / private / link-local addresses "
        "(only for a service inside your own network)",
    )
    add(
        "--url-timeout",
        type=float,
        default=defaults.DEFAULT_URL_TIMEOUT_S,
        metavar="S",
        help="total time for fetching one URL (default: %(default)s)",
    )
    add(
        "--drain-seconds",
        type=float,
        default=defaults.DEFAULT_DRAIN_SECONDS,
        metavar="S",
        help="after SIGTERM, longest wait for requests in progress (default: %(default)s)",
    )
    add("--log-json", action="store_true", help="log one JSON object per request")
    add(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default=ServiceSettings.loop,
        help="event loop (default: %(default)s: uvloop if installed, else asyncio)",
    )
    add(
        "--http",
        choices=("auto", "httptools", "h11"),
        default=ServiceSettings.http,
        help="HTTP parser (default: %(default)s: httptools if installed, else h11)",
    )
    args = parser.parse_args(argv)
    for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_images", "deadline_ms"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.topk <= 1000:
        parser.error("--topk must be between 1 and 1000")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    for name in (
        "max_wait_ms",
        "inference_processes",
        "engine_threads",
        "drain_seconds",
    ):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more")
    if args.url_timeout <= 0:
        parser.error("--url-timeout must be more than 0")
    if args.allow_private_urls and not args.allow_urls:
        parser.error("--allow-private-urls only makes sense with --allow-urls")
    return ServiceSettings(
        weights=args.weights,
        backend=args.backend,
        tta=args.tta,
        index=args.index,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        max_images=args.max_images,
        deadline_ms=args.deadline_ms,
        topk=args.topk,
        inference_processes=args.inference_processes,
        engine_threads=args.engine_threads,
        allow_urls=args.allow_urls,
        allow_private_urls=args.allow_private_urls,
        url_timeout_s=args.url_timeout,
        drain_seconds=args.drain_seconds,
        log_json=args.log_json,
        loop=args.loop,
        http=args.http,
    )


def run(settings: ServiceSettings) -> int:
    """Load the model, then serve until a signal; returns the exit code."""
    # Heavy imports after parsing, so --help answers at once.
    from imgclf.model.predictor import load_predictor
    from imgclf.serve.access_log import configure_logging
    from imgclf.serve.app import create_app
    from imgclf.serve.server import serve

    configure_logging()
    predictor = load_predictor(settings.weights, settings.backend, tta=settings.tta)
    gallery = load_index(settings, predictor) if settings.index else None
    app = create_app(settings, predictor, gallery)
    serve(
        app,
        host=settings.host,
        port=settings.port,
        state=app.state.service.state,
        drain_seconds=settings.drain_seconds,
        loop=settings.loop,
        http=settings.http,
    )
    return EXIT_OK


def load_index(settings: ServiceSettings, predictor):
    """The --index gallery, verified like `utils/search.py query` does (InputError if made with
    other weights, of another embedding size, or damaged)."""
    from imgclf.search.querying import verify_gallery
    from imgclf.search.store import read_gallery
    from imgclf.serve.service import weights_sha256

    assert settings.index is not None
    gallery = read_gallery(settings.index)
    verify_gallery(
        gallery, settings.index, weights_sha256(settings, predictor), settings.weights, predictor
    )
    return gallery


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit code 2, no traceback."""
    settings = parse_args(argv, description)
    return run_command(lambda: run(settings), prog=PROG)
