"""Every key a training config may have, so a typo stops the run instead of being ignored.

Catalyst silently ignores keys it does not read, and so would the runner: `data.img_sise: 128`
would train at the default size. Here every block Catalyst or imgclf reads has its list of keys
(`args`, `runner`, `stages.<name>`, `data`, `model`, `export`); an unknown key is refused with
the nearest valid name (difflib). The components built from `_target_` nodes (criterion,
optimizer, scheduler, callbacks, engine, loggers) are checked by building them: their class
refuses an unknown argument itself.

`catalyst-dl run --config a.yaml b.yaml` merges its files before any of our code is imported,
and replaces the files' `args.seed` by its own `--seed` default. `command_line_configs` reads
the files again, so that a mistake is reported with the file it is in, and a file's
`args.seed` is checked (and used unless `--seed` was given).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from imgclf.errors import InputError
from imgclf.train.settings import DataSettings, ExportSettings, ModelSettings, unknown_key_error

# `shared:` holds YAML anchors for the other blocks, so its content is free.
TOP_LEVEL_KEYS = (
    "args",
    "runner",
    "engine",
    "loggers",
    "stages",
    "shared",
    "data",
    "model",
    "export",
)
# What catalyst-dl run's options and ConfigRunner read from `args:`, with the type each needs.
ARGS_TYPES: dict[str, type | tuple[type, ...]] = {
    "expdir": str,
    "logdir": str,
    "baselogdir": str,
    "resume": str,
    "autoresume": str,
    "seed": int,
    "name": str,
    "configs": list,
    "command": str,
    **{
        flag: bool
        for flag in (
            "apex",
            "amp",
            "fp16",
            "ddp",
            "verbose",
            "timeit",
            "check",
            "overfit",
            "deterministic",
            "benchmark",
            "hydra",
        )
    },
}
TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
AUTORESUME_CHOICES = ("best", "last")
# SupervisedConfigRunner's keyword arguments, given in `runner:`.
RUNNER_KEYS = ("_target_", "input_key", "output_key", "target_key", "loss_key")
# A stage: what Catalyst's config runner reads, plus imgclf's `freeze_backbone` and
# `max_minutes` (the time budget, imgclf.train.budget).
STAGE_KEYS = (
    "num_epochs",
    "freeze_backbone",
    "max_minutes",
    "criterion",
    "optimizer",
    "scheduler",
    "callbacks",
)
BLOCK_KEYS = {
    "data": tuple(field.name for field in fields(DataSettings)),
    "model": tuple(field.name for field in fields(ModelSettings)),
    "export": tuple(field.name for field in fields(ExportSettings)),
    "runner": RUNNER_KEYS,
    "args": tuple(ARGS_TYPES),
}


def _check_keys(block: Any, where: str, valid: Sequence[str], source: str) -> None:
    if not isinstance(block, Mapping):
        if block is None:
            return
        raise InputError(f"{where} in {source} must be a mapping of keys, got {block!r}.")
    for key in block:
        if key not in valid:
            raise unknown_key_error(where, key, valid, source)


def _check_args_types(args: Mapping[str, Any], source: str) -> None:
    for key, value in args.items():
        kind = ARGS_TYPES[key]
        if value is None:
            continue
        # YAML reads `seed: 7` as int, `seed: abc` as str; bool is an int in Python.
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong:
            raise InputError(
                f"args.{key} is {value!r} in {source}; it must be {TYPE_NAMES[kind]}."
            )
        if key == "autoresume" and value not in AUTORESUME_CHOICES:
            raise InputError(f"args.autoresume is {value!r} in {source}; it must be best or last.")


def check_config_keys(config: Mapping[str, Any], source: str = "the config") -> None:
    """Refuse unknown keys (with the nearest valid name) and wrongly typed `args`."""
    _check_keys(config, "", TOP_LEVEL_KEYS, source)
    for block, valid in BLOCK_KEYS.items():
        _check_keys(config.get(block), block, valid, source)
    _check_args_types(config.get("args") or {}, source)
    stages = config.get("stages")
    if isinstance(stages, Mapping):
        for name, stage in stages.items():
            if isinstance(stage, Mapping):
                _check_keys(stage, f"stages.{name}", STAGE_KEYS, source)


def read_config_file(path: Path) -> dict[str, Any]:
    """One config file as Catalyst read it. Catalyst has loaded it already (a missing, non-YAML
    or non-mapping file stops in its loader, in one sentence once tools/patch_catalyst.py has
    repaired that), so only what it accepted gets here."""
    from catalyst.utils.config import load_config

    return dict(load_config(str(path), ordered=True))


def catalyst_dl_run_options(argv: Sequence[str]) -> argparse.Namespace | None:
    """`catalyst-dl run`'s options parsed from `argv` as it parsed them, or None when this
    process is not `catalyst-dl run`."""
    if len(argv) < 2 or Path(argv[0]).name != "catalyst-dl" or argv[1] != "run":
        return None
    from catalyst.dl.scripts.run import build_args

    parser = build_args(argparse.ArgumentParser(add_help=False))
    options, _ = parser.parse_known_args(list(argv[2:]))
    return options


def command_line_configs(argv: Sequence[str] | None = None) -> list[tuple[Path, dict]]:
    """The `--config` files of this `catalyst-dl run` process, each read and key-checked
    (empty when the runner was built another way)."""
    options = catalyst_dl_run_options(sys.argv if argv is None else argv)
    if options is None or not options.configs:
        return []
    files = [(Path(name), read_config_file(Path(name))) for name in options.configs]
    for path, content in files:
        check_config_keys(content, source=str(path))
    return files


def seed_given_on_command_line(argv: Sequence[str] | None = None) -> bool:
    """Whether `--seed` was passed (catalyst-dl run otherwise applies its default 42)."""
    argv = sys.argv if argv is None else argv
    return any(arg == "--seed" or arg.startswith("--seed=") for arg in argv)
