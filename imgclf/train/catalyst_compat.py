"""The one door to Catalyst's private API, and the check that the installed Catalyst is 21.12.

Catalyst 21.12 is the last release with `catalyst-dl run --config` and stages, and upstream
stopped in 2022. Everything imgclf needs from it beyond its documented API lives here, so that a
future Catalyst fix (or a replacement) touches this file alone:

- `ConfigRunnerBase`: the config runner's underscore attributes (`_config`, `_stage_config`,
  `_resume`, `_input_key`, `_target_key`) as public names;
- `callback_isinstance`, `original_callback`: from the private `catalyst.core._misc`;
- `CheckpointWriterCallback`: the `_save_checkpoint` hook of `CheckpointCallback`, and
  `restore_best_score` (its `_use_model_selection`, `best_score`, `top_best_metrics`);
- `all_gather`: the repair of Catalyst's own, which moves its buffers to "cuda" unconditionally,
  so any distributed run on CPU (gloo) crashed at the first epoch end;
- `install()`: every process-wide change imgclf makes to Catalyst or warnings, called once, from
  the experiment package `imgclf/train/__init__.py` (the one place, on purpose).

Repairs of Catalyst's installed files (Python >= 3.10 removed `collections.Mapping`, used before
any of our code is imported) can't happen at import time: `tools/patch_catalyst.py` makes them at
install time (`make setup`, the Dockerfile), and `tests/test_setup.py` checks them.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import catalyst

from imgclf.errors import InputError, report_input_error

SUPPORTED_VERSION = "21.12"


def check_catalyst_version(version: str = catalyst.__version__) -> None:
    """Raise InputError unless `version` is the Catalyst release imgclf is written against."""
    if version != SUPPORTED_VERSION:
        raise InputError(
            f"imgclf trains with catalyst=={SUPPORTED_VERSION} but catalyst {version} is "
            f"installed; run `make setup` (tools/install.sh pins {SUPPORTED_VERSION} and "
            "tools/patch_catalyst.py repairs it for Python 3.10+)."
        )


# Checked before importing anything else from Catalyst: other releases lack the modules below
# (22.x removed the config runner), and the user should read this sentence, not an ImportError.
try:
    check_catalyst_version()
except InputError as error:
    raise SystemExit(report_input_error(error, "catalyst-dl run")) from None

import torch.distributed as dist  # noqa: E402
from catalyst.callbacks import CheckpointCallback  # noqa: E402
from catalyst.runners.config import SupervisedConfigRunner  # noqa: E402

# Warnings Catalyst raises on every run of ours for nothing we can act on.
KNOWN_WARNINGS = (
    # Its loss metric calls float() on the loss tensor.
    "Converting a tensor with requires_grad=True",
    # It adds the DistributedSampler to our plain loaders itself.
    "With distributed training setup",
)
# Catalyst's modules that bound `all_gather` by name at import: each gets the repaired one.
ALL_GATHER_USERS = (
    "utils",
    "utils.distributed",
    "metrics._classification",
    "metrics._segmentation",
    "metrics._confusion_matrix",
    "metrics._auc",
)


class ConfigRunnerBase(SupervisedConfigRunner):
    """Catalyst's SupervisedConfigRunner with its private state under public names."""

    @property
    def config(self) -> dict[str, Any]:
        """The whole (merged) config the run was started with."""
        return self._config

    @property
    def stage_configs(self) -> dict[str, dict[str, Any]]:
        """`config["stages"]`: every stage's block by name, in config order."""
        return self._stage_config

    @property
    def resume_path(self) -> str | None:
        """`args.resume` (set by --resume, or by --autoresume when the checkpoint exists)."""
        return self._resume

    def take_over_resume(self) -> None:
        """Stop Catalyst's own resume (its CheckpointCallback reads `_resume`): ours continues
        the remaining epochs, Catalyst's restarts the stage's epoch count."""
        self._resume = None

    @property
    def input_key(self) -> str:
        """The batch key of the model's input (`features`)."""
        return self._input_key

    @property
    def target_key(self) -> str:
        """The batch key of the hard class targets (`targets`)."""
        return self._target_key


def callback_isinstance(callback: Any, kind: type) -> bool:
    """Whether `callback`, or the callback a wrapper (e.g. ControlFlowCallback) holds, is a
    `kind`."""
    from catalyst.core._misc import callback_isinstance as catalyst_callback_isinstance

    return catalyst_callback_isinstance(callback, kind)


def original_callback(callback: Any) -> Any:
    """The callback inside any wrappers Catalyst put around it."""
    from catalyst.core._misc import _get_original_callback

    return _get_original_callback(callback)


class CheckpointWriterCallback(CheckpointCallback):
    """Catalyst's CheckpointCallback (same arguments) whose files are written by
    `write_checkpoint`, a method subclasses define (Catalyst's hook is `_save_checkpoint`)."""

    def _save_checkpoint(self, runner, checkpoint: dict, is_best: bool, is_last: bool) -> str:
        # Catalyst keeps the returned path to delete the checkpoints that fall out of top-N.
        return self.write_checkpoint(runner, checkpoint, is_best=is_best, is_last=is_last)

    def write_checkpoint(self, runner, checkpoint: dict, *, is_best: bool, is_last: bool) -> str:
        """Write `checkpoint` (and its best / last copies); return the epoch file's path."""
        raise NotImplementedError


def restore_best_score(
    callbacks: dict[str, Any], best: dict[str, Any], best_path_of_stage: str
) -> None:
    """Tell each model-selecting CheckpointCallback of `callbacks` the best checkpoint so far
    (`best`, a loaded checkpoint written as `best_path_of_stage`), so that a worse epoch after a
    resume does not replace it."""
    for callback in callbacks.values():
        callback = original_callback(callback)
        if not isinstance(callback, CheckpointCallback) or not callback._use_model_selection:
            continue
        score = float(best["epoch_metrics"][callback.loader_key][callback.metric_key])
        callback.best_score = score
        stage, epoch = best["stage_key"], best["stage_epoch_step"]
        callback.top_best_metrics = [
            (score, best_path_of_stage, stage, epoch, best["epoch_metrics"])
        ]


def all_gather(data: Any) -> list[Any]:
    """Every process's `data` (any picklable object), in rank order, on the backend's device."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return [data]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, data)
    return gathered


def install() -> None:
    """Every process-wide change imgclf makes: the `all_gather` repair in Catalyst's modules
    and the known warnings silenced. Idempotent; distributed workers run it too, because they
    import the experiment package when they unpickle the runner."""
    for module in ALL_GATHER_USERS:
        importlib.import_module(f"catalyst.{module}").all_gather = all_gather
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
