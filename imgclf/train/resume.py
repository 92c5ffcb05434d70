"""Resume: an interrupted run continues its remaining epochs, and is never overwritten silently.

Catalyst 21.12's own resume restarts the resumed stage's epoch count (a 100-epoch stage
interrupted after epoch 60 would run 100 more), so the runner takes resume over:
- `read_resume_point` checks `--resume` / `--autoresume` up front: the file exists, is a
  readable full checkpoint, and was written in a stage this config has (one sentence otherwise);
- the stages before the resumed one are skipped, and at the resumed stage's start `restore`
  loads model, optimizer, scheduler and step counters, and tells the checkpoint callback the
  best score so far, so a worse epoch after the resume does not replace the best checkpoint;
- in distributed runs every stage starts in fresh workers: `carry_over` hands the previous
  stage's model and counters on through its last checkpoint.

A run marks its logdir finished after the export (`FINISHED_FILE`); a fresh start in a logdir
that holds an unfinished run's checkpoints is refused (`check_fresh_start`), with both ways on:
resume it, or give a new logdir.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgclf.errors import InputError
from imgclf.fileio import atomic_write_json
from imgclf.train.catalyst_compat import restore_best_score

# The logdir's subfolder of Catalyst's checkpoints, and the ones imgclf reads.
CHECKPOINTS = "checkpoints"
BEST = "best.pth"
LAST_FULL = "last_full.pth"
# Written after a run's export: the logdir's checkpoints belong to a finished run.
FINISHED_FILE = "finished.json"
# The runner's step counters that a checkpoint stores.
GLOBAL_COUNTERS = ("global_epoch_step", "global_batch_step", "global_sample_step")
STAGE_COUNTERS = ("stage_epoch_step", "stage_batch_step", "stage_sample_step")


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run picks up: the checkpoint file and the stage it was written in."""

    path: Path
    stage: str
    stage_epoch: int


def last_checkpoint(run_dir: Path) -> Path:
    """The full checkpoint of the run's last finished epoch (the one to resume from)."""
    return run_dir / CHECKPOINTS / LAST_FULL


def resume_hint(run_dir: Path) -> str:
    """How to go on after an interrupt, naming the checkpoint when there is one."""
    last = last_checkpoint(run_dir)
    if last.is_file():
        return f"continue with the same command plus --resume {last} (or --autoresume last)"
    return "no epoch had finished, so no checkpoint was kept; rerun the same command to start over"


def load_checkpoint(path: Path, what_next: str = "pass another checkpoint") -> dict[str, Any]:
    """The checkpoint at `path`; InputError with one sentence, ending in `what_next`, if it
    can't be read."""
    try:
        checkpoint = torch.load(path, map_location="cpu")
    except Exception as error:  # torch raises anything from EOFError to RuntimeError here
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"Checkpoint {path} can't be read ({reason}); it is damaged or not a checkpoint: "
            f"{what_next}."
        ) from None
    if not isinstance(checkpoint, dict):
        raise InputError(f"{path} is not a Catalyst checkpoint: {what_next}.")
    return checkpoint


def read_resume_point(
    resume: str | None, run_dir: Path, stages: Iterable[str]
) -> ResumePoint | None:
    """Check the checkpoint named by `--resume` (None: a fresh start) against the config."""
    if not resume:
        return None
    path = Path(resume)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise InputError(
            f"Checkpoint {path} {what}; resume from {last_checkpoint(run_dir)} "
            "or use --autoresume last."
        )
    checkpoint = load_checkpoint(
        path,
        f"resume from another one (e.g. {path.parent / 'best_full.pth'}), "
        "or start over with --logdir <new folder>",
    )
    if "optimizer_state_dict" not in checkpoint:
        raise InputError(
            f"{path} is a model-only checkpoint; resume from a *_full.pth checkpoint, "
            f"e.g. {path.parent / LAST_FULL}."
        )
    stage = checkpoint.get("stage_key")
    if stage not in set(stages):
        raise InputError(
            f"{path} was written in stage {stage!r}, which this config does not have; "
            "resume with the config the run was started with."
        )
    return ResumePoint(path, stage, int(checkpoint["stage_epoch_step"]))


def check_fresh_start(run_dir: Path) -> None:
    """Refuse to start over in a logdir whose interrupted run would lose its checkpoints."""
    last = last_checkpoint(run_dir)
    if last.is_file() and not (run_dir / FINISHED_FILE).is_file():
        raise InputError(
            f"{run_dir} holds an unfinished run (checkpoint {last}); continue it with the same "
            f"command plus --resume {last} (or --autoresume last), or start a new run with "
            "--logdir <new folder> (or delete the folder)."
        )


def mark_started(run_dir: Path) -> None:
    """A fresh run begins: the logdir's checkpoints are no longer a finished run's.

    The finished run's last checkpoint goes first: interrupted before its first epoch, the new
    run would otherwise leave it looking like its own, to be refused over or resumed from.
    """
    finished = run_dir / FINISHED_FILE
    if finished.is_file():
        last_checkpoint(run_dir).unlink(missing_ok=True)
    finished.unlink(missing_ok=True)


def mark_finished(run_dir: Path, weights: Path) -> None:
    """The run exported its weights: starting over in this logdir loses nothing unfinished."""
    atomic_write_json(run_dir / FINISHED_FILE, {"weights": str(weights)})


def set_counters(runner, checkpoint: dict[str, Any], counters: tuple[str, ...]) -> None:
    """Copy the step counters `counters` from `checkpoint` onto the runner."""
    for counter in counters:
        setattr(runner, counter, checkpoint[counter])


def restore(runner, point: ResumePoint, run_dir: Path) -> None:
    """Load model, optimizer, scheduler and counters; the stage goes on where it stopped."""
    checkpoint = runner.engine.load_checkpoint(str(point.path))
    runner.engine.unpack_checkpoint(
        checkpoint,
        model=runner.model,
        criterion=runner.criterion,
        optimizer=runner.optimizer,
        scheduler=runner.scheduler,
    )
    set_counters(runner, checkpoint, GLOBAL_COUNTERS + STAGE_COUNTERS)
    if runner.engine.is_master_process:
        print(
            f"=> resumed from {point.path}: stage {point.stage!r}, "
            f"epoch {point.stage_epoch} of {runner.stage_epoch_len} done"
        )
    best_path = run_dir / CHECKPOINTS / BEST
    if not best_path.is_file():
        return
    best = torch.load(best_path, map_location="cpu")
    if best.get("stage_key") != point.stage:
        return
    # Callbacks learn their logdir only at their own stage start, after this one.
    epoch_file = run_dir / CHECKPOINTS / f"{point.stage}.{best['stage_epoch_step']}.pth"
    restore_best_score(runner.callbacks, best, str(epoch_file))


def carry_over(runner, run_dir: Path) -> None:
    """Start a distributed stage from the previous stage's last model and global counters."""
    last = runner.engine.load_checkpoint(str(run_dir / CHECKPOINTS / "last.pth"))
    runner.engine.unpack_checkpoint(last, model=runner.model)
    set_counters(runner, last, GLOBAL_COUNTERS)
