"""Run the whole pipeline on the bundled data with the user's own three commands.

Each stage runs as a subprocess with exactly the command line the README shows, in the project
folder, with this interpreter's environment first on PATH: the demo proves that the documented
commands work, so it must not take shortcuts through the package's functions.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from imgclf.demo.resume import (
    RESUME_ARGS,
    interrupted_training,
    mark_training_done,
    mark_training_started,
    training_plan,
)
from imgclf.demo.server import Planted, serve_folder
from imgclf.demo.urls import (
    DemoUrl,
    broken_rows,
    broken_samples,
    list_images,
    stratified_rows,
    write_url_list,
)
from imgclf.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_DATA = PROJECT_ROOT / "data" / "demo" / "sign_language_digits"
URL_LIST = Path("data/demo/urls/urls.csv")
IMAGES = Path("data/demo/images")
CONFIGS = (Path("configs/config.yaml"), Path("configs/demo.yaml"))
WEIGHTS = Path("weights/mobilenet_v3_small.pth")
# How long a command may take to stop after Ctrl-C before it is asked again, then killed.
INTERRUPT_GRACE_SECONDS = 15


@dataclass(frozen=True)
class DemoOptions:
    """What `tools/demo.py` may change; the defaults are the real demo."""

    workdir: Path = PROJECT_ROOT
    data: Path = BUNDLED_DATA
    per_class: int | None = None
    test_fraction: float = 0.15
    seed: int = 0
    extra_configs: tuple[Path, ...] = ()

    def command_line(self) -> str:
        """The options that decide the data and the training, as tools/demo.py takes them."""
        words = ["--data", str(self.data), "--test-fraction", str(self.test_fraction)]
        words += ["--seed", str(self.seed)]
        if self.per_class is not None:
            words += ["--per-class", str(self.per_class)]
        for config in self.extra_configs:
            words += ["--config", str(config)]
        return shlex.join(words)


@dataclass(frozen=True)
class Step:
    """One user command of the pipeline and the files it must leave (relative to the workdir)."""

    title: str
    argv: tuple[str, ...]
    outputs: tuple[Path, ...]

    @property
    def command(self) -> str:
        """The command line exactly as a user types it."""
        return shlex.join(self.argv)

    def resumed(self) -> Step:
        """This training step plus `--autoresume last`: it goes on from the logdir's last
        checkpoint (and starts afresh when no epoch had finished)."""
        return replace(self, title=f"{self.title} (resumed)", argv=(*self.argv, *RESUME_ARGS))


def pipeline_steps(extra_configs: Sequence[Path] = ()) -> list[Step]:
    """The three user commands the demo runs, in order."""
    return [
        Step(
            "Downloading and validating the images",
            ("python", "utils/download_data.py", "--urls", str(URL_LIST), "--out", str(IMAGES)),
            (IMAGES / "manifest.csv", IMAGES / "download_stats.json"),
        ),
        Step(
            "Training mobilenet_v3_small",
            ("catalyst-dl", "run", "--config", *map(str, CONFIGS), *map(str, extra_configs)),
            (WEIGHTS, Path("pictures/logs.png")),
        ),
        Step(
            "Evaluating on the held-out test split",
            ("python", "utils/inference.py"),
            (
                Path("reports/metrics.json"),
                Path("pictures/confusion_matrix.png"),
                Path("pictures/confusion_matrix_normalized.png"),
                Path("pictures/errors.png"),
            ),
        ),
    ]


def say(message: str) -> None:
    """Print a progress line at once (the children's output interleaves with ours)."""
    print(message, flush=True)


def command_environment() -> dict[str, str]:
    """The caller's environment with this interpreter's bin folder first on PATH.

    `make demo` runs us with `.venv/bin/python`; putting `.venv/bin` first makes `python` and
    `catalyst-dl` in the user's command lines resolve to the project's environment, as after
    `source .venv/bin/activate`.
    """
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    return env


def check_prerequisites(options: DemoOptions, steps: list[Step], env: dict[str, str]) -> None:
    """Fail before any work, with one sentence, when a script, config or program is missing."""
    workdir = options.workdir
    needed = [Path("utils/download_data.py"), Path("utils/inference.py"), *CONFIGS]
    for path in needed:
        if not (workdir / path).is_file():
            raise InputError(
                f"{workdir / path} is missing; run the demo from an imgclf checkout "
                "(or pass --workdir with utils/, configs/ and imgclf/)."
            )
    for config in options.extra_configs:
        if not (workdir / config).is_file():
            raise InputError(f"--config {config} does not exist; give an existing YAML file.")
    for step in steps:
        if shutil.which(step.argv[0], path=env["PATH"]) is None:
            raise InputError(
                f"`{step.argv[0]}` is not installed next to {sys.executable}; run `make setup`."
            )


def clear_previous_download(images: Path) -> None:
    """Remove an earlier demo download so that file names and counts reflect this run only.

    The server's port changes between runs and file names derive from the URL, so a kept
    folder would fill up with copies. Anything that is not a downloader output is left alone.
    """
    if not images.exists():
        return
    if not (images / "manifest.csv").is_file() and any(images.iterdir()):
        raise InputError(
            f"{images} exists but holds no manifest.csv of an earlier demo; move it and rerun."
        )
    say(f"    removing the previous demo download {images}/")
    shutil.rmtree(images)


def run_step(
    number: int, total: int, step: Step, options: DemoOptions, env: dict[str, str]
) -> float:
    """Run one user command in the workdir; returns its duration, raises StepFailed on error."""
    say(f"\n==> [{number}/{total}] {step.title}\n    $ {step.command}")
    start = time.perf_counter()
    executable = shutil.which(step.argv[0], path=env["PATH"]) or step.argv[0]
    returncode = run_command([executable, *step.argv[1:]], cwd=options.workdir, env=env)
    seconds = time.perf_counter() - start
    if returncode != 0:
        raise StepFailed(number, step, returncode)
    missing = [str(path) for path in step.outputs if not (options.workdir / path).exists()]
    if missing:
        raise StepFailed(number, step, 1, f"finished but did not write {', '.join(missing)}")
    say(f"    done in {format_seconds(seconds)}; wrote {', '.join(map(str, step.outputs))}")
    return seconds


def run_command(argv: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run `argv` to completion; on Ctrl-C let it shut down cleanly, then re-raise.

    Ctrl-C in a terminal reaches the whole process group, so the command gets it too and is
    given time to finish its own clean-up (the downloader writes its manifest, training its
    checkpoint) instead of being killed half-way as `subprocess.run` would after 0.25 s.
    """
    process = subprocess.Popen(argv, cwd=cwd, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_after_interrupt(process)
        raise


def stop_after_interrupt(process: subprocess.Popen) -> None:
    """Wait for `process` to stop after a Ctrl-C; ask it once more, then kill it."""
    try:
        process.wait(timeout=INTERRUPT_GRACE_SECONDS)
        return
    except subprocess.TimeoutExpired:
        pass
    # Still running: the interrupt reached the demo alone (e.g. `kill -INT`), so pass it on.
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=INTERRUPT_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class StepFailed(Exception):
    """A user command failed; `exit_code` is what the demo exits with."""

    def __init__(self, number: int, step: Step, exit_code: int, detail: str = "") -> None:
        self.exit_code = exit_code if exit_code > 0 else 1
        what = detail or f"exited with code {exit_code} (its output is above)"
        super().__init__(f"step {number} ({step.title.lower()}) {what}: `{step.command}`")


def format_seconds(seconds: float) -> str:
    """`75.3` → `1 min 15 s`; short durations keep a decimal."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def plan_url_list(options: DemoOptions) -> tuple[list[DemoUrl], dict[str, Planted], str]:
    """The URL list's rows, the bodies the server plants for the broken ones, and a summary."""
    images = list_images(options.data)
    rows = stratified_rows(
        images,
        options.data,
        test_fraction=options.test_fraction,
        seed=options.seed,
        per_class=options.per_class,
    )
    n_images, n_test = len(rows), sum(row.split == "test" for row in rows)
    first_label, first_files = next(iter(images.items()))
    broken = broken_samples(first_files[0])
    rows += broken_rows(broken, label=first_label)
    planted = {b.path: Planted(b.body, b.content_type) for b in broken if b.body is not None}
    description = (
        f"{n_images} images in {len(images)} classes ({n_test} marked split=test) and "
        f"{len(broken)} deliberately broken URLs: a 404, a web page, a truncated JPEG"
    )
    return rows, planted, description


def run_demo(options: DemoOptions) -> int:
    """Serve the bundled data, run download → train → evaluate; returns the exit code.

    After an interrupted training the download is kept and the training resumed (`resume`).
    """
    start = time.perf_counter()
    steps = pipeline_steps(options.extra_configs)
    env = command_environment()
    check_prerequisites(options, steps, env)
    total = len(steps) + 1
    ran: list[tuple[Step, float]] = []

    rows, planted, description = plan_url_list(options)
    configs = [*CONFIGS, *options.extra_configs]
    plan = training_plan(options.command_line(), rows, configs, options.workdir)
    training, evaluation = steps[1:]

    try:
        if interrupted_training(options.workdir, plan, IMAGES):
            say(
                f"==> [1/{total}] [2/{total}] Kept from the interrupted run: {URL_LIST} and "
                f"{IMAGES}/ (a new download would rename the images and change the split)"
            )
            training = training.resumed()
        else:
            say(f"==> [1/{total}] Serving {options.data} on a throwaway HTTP server")
            with serve_folder(options.data, planted) as base_url:
                write_url_list(options.workdir / URL_LIST, rows, base_url)
                say(f"    {base_url}/ serves {description}\n    URL list: {URL_LIST}")
                clear_previous_download(options.workdir / IMAGES)
                ran.append((steps[0], run_step(2, total, steps[0], options, env)))
            say("    HTTP server stopped")
        mark_training_started(options.workdir, plan)
        ran.append((training, run_step(3, total, training, options, env)))
        mark_training_done(options.workdir)
        ran.append((evaluation, run_step(4, total, evaluation, options, env)))
    except StepFailed as failure:
        say(f"\ndemo stopped: {failure}")
        return failure.exit_code

    say(f"\nDemo finished in {format_seconds(time.perf_counter() - start)}:")
    for step, seconds in ran:
        say(f"  {format_seconds(seconds):>12}  {step.command}")
    outputs = [URL_LIST, IMAGES, *(path for step in steps for path in step.outputs)]
    say(f"Outputs in {options.workdir}: {', '.join(map(str, outputs))}")
    return 0
