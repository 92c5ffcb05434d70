"""A rerun of the demo after its training was interrupted resumes that training.

Just before the training step the demo writes `PENDING_TRAINING`, which says what the run was
started with, and removes it once the step succeeded. A rerun that finds it (Ctrl-C, `kill`,
a crash during training) keeps the URL list and the download of that run, and runs the same
training command plus `--autoresume last`: a new download would serve the images on another
port, so their file names (derived from the URL) and with them the train / valid split would
change under the resumed model. Without the file a rerun starts over, as a first run does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from imgclf.demo.urls import DemoUrl, render_url_list
from imgclf.errors import InputError
from imgclf.fileio import atomic_write_json

PENDING_TRAINING = Path("data/demo/unfinished_training.json")
RESUME_ARGS = ("--autoresume", "last")


def training_plan(
    options_line: str, rows: list[DemoUrl], configs: list[Path], workdir: Path
) -> dict[str, Any]:
    """What a resumed training must share with the interrupted one: the demo's options (as a
    command line, for the message), its URL list (without the server's address) and the logdir
    its config files name."""
    digest = hashlib.sha256(render_url_list(rows, "").encode()).hexdigest()
    return {
        "options": options_line,
        "url_list_sha256": digest,
        "logdir": str(config_logdir(configs, workdir)),
    }


def config_logdir(configs: list[Path], workdir: Path) -> Path:
    """`args.logdir` as catalyst-dl run merges `configs` (the last file that sets it wins)."""
    logdir = "logs/train"
    for config in configs:
        try:
            content = yaml.safe_load((workdir / config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # the training step itself says what is wrong with the file
        args = content.get("args") if isinstance(content, dict) else None
        if isinstance(args, dict) and args.get("logdir"):
            logdir = str(args["logdir"])
    return Path(logdir)


def mark_training_started(workdir: Path, plan: dict[str, Any]) -> None:
    """The training step starts: until it succeeds, a rerun resumes it."""
    atomic_write_json(workdir / PENDING_TRAINING, plan)


def mark_training_done(workdir: Path) -> None:
    """The training step succeeded: a rerun starts over."""
    (workdir / PENDING_TRAINING).unlink(missing_ok=True)


def interrupted_training(workdir: Path, plan: dict[str, Any], images: Path) -> bool:
    """True when a rerun must resume the previous run's training; InputError (one sentence)
    when that run can't be resumed by this one."""
    marker = workdir / PENDING_TRAINING
    if not marker.is_file():
        return False
    try:
        previous = json.loads(marker.read_text(encoding="utf-8"))
        logdir = str(previous["logdir"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(
            f"{marker} is damaged; delete it (and the demo's training logdir, logs/demo, to "
            "start over) and rerun."
        ) from None
    start_over = f"or delete {marker} and {workdir / logdir}/ to start over"
    if previous != plan:
        raise InputError(
            f"{marker}: the interrupted demo training was started with other options "
            f"({previous.get('options') or 'the defaults'}); rerun with those to resume it, "
            f"{start_over}."
        )
    if not (workdir / images / "manifest.csv").is_file():
        raise InputError(
            f"{marker}: the download of the interrupted demo training ({workdir / images}/) is "
            f"gone, so it can't be resumed on the same images; {start_over.removeprefix('or ')}."
        )
    return True
