"""The demo driver: its command line, its checks, and the real pipeline end to end.

The end-to-end tests run `make demo` / tools/demo.py for real, in a throwaway work folder that
links the project's utils/, configs/ and imgclf/, so the project's own outputs stay untouched.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from imgclf.demo.pipeline import (
    CONFIGS,
    IMAGES,
    URL_LIST,
    DemoOptions,
    clear_previous_download,
    pipeline_steps,
    plan_url_list,
)
from imgclf.demo.resume import (
    PENDING_TRAINING,
    interrupted_training,
    mark_training_done,
    mark_training_started,
    training_plan,
)
from imgclf.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, str(ROOT / "tools" / "demo.py")]
STAGES = [ROOT / "utils" / "download_data.py", ROOT / "utils" / "inference.py"]
STAGES += [ROOT / "configs" / "demo.yaml"]
needs_stages = pytest.mark.skipif(
    not all(path.exists() for path in STAGES), reason="the pipeline's stages have not landed yet"
)

# A few seconds of training instead of minutes: one small epoch on tiny images.
QUICK_CONFIG = {
    # min_epoch_images 0: one pass over the images, not the default's 1024 draws.
    "data": {"img_size": 32, "batch_size": 16, "num_workers": 0, "min_epoch_images": 0},
    "stages": {"train": {"num_epochs": 1, "scheduler": {"warmup_epochs": 0}}},
}


def demo_workdir(tmp_path: Path) -> Path:
    """A work folder with the project's code linked in and nothing else."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    for name in ("utils", "configs", "imgclf"):
        (workdir / name).symlink_to(ROOT / name, target_is_directory=True)
    return workdir


def test_help_lists_every_option():
    result = subprocess.run([*DEMO, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    for option in ("--data", "--per-class", "--test-fraction", "--seed", "--config", "--workdir"):
        assert option in result.stdout
    # The help shows the exact commands the demo runs.
    for step in pipeline_steps():
        assert step.command in result.stdout


def test_missing_project_files_stop_the_demo_with_one_sentence(tmp_path):
    result = subprocess.run(
        [*DEMO, "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"tools/demo.py: error: {tmp_path}/utils/download_data.py is missing; run the demo from "
        "an imgclf checkout (or pass --workdir with utils/, configs/ and imgclf/).\n"
    )
    assert not (tmp_path / URL_LIST).exists()


@pytest.mark.parametrize("option", [["--per-class", "1"], ["--test-fraction", "1.5"]])
@needs_stages
def test_bad_options_are_one_sentence_and_exit_2(tmp_path, option):
    result = subprocess.run(
        [*DEMO, "--workdir", str(demo_workdir(tmp_path)), *option], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"tools/demo.py: error: {option[0]} ")
    assert "Traceback" not in result.stderr


def test_clear_previous_download_removes_an_earlier_demo_output(tmp_path):
    images = tmp_path / "images"
    (images / "0").mkdir(parents=True)
    (images / "0" / "abc.jpg").write_bytes(b"jpeg")
    (images / "manifest.csv").write_text("url,label\n")
    clear_previous_download(images)
    assert not images.exists()
    clear_previous_download(images)  # nothing there: nothing to do


def test_clear_previous_download_keeps_a_folder_it_did_not_write(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "precious.jpg").write_bytes(b"jpeg")
    with pytest.raises(InputError, match=r"no manifest\.csv"):
        clear_previous_download(images)
    assert (images / "precious.jpg").read_bytes() == b"jpeg"


@needs_stages
def test_failing_step_stops_the_demo_with_its_exit_code(tmp_path):
    workdir = demo_workdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**QUICK_CONFIG, "model": {"arch": "no_such_net"}}))
    result = subprocess.run(
        [*DEMO, "--workdir", str(workdir), "--per-class", "4", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "HTTP server stopped" in result.stdout
    assert "demo stopped: step 3 (training mobilenet_v3_small) exited with code 2" in result.stdout
    assert "[4/4]" not in result.stdout
    assert not (workdir / "reports").exists()


@needs_stages
def test_ctrl_c_stops_the_server_and_exits_130(tmp_path):
    workdir = demo_workdir(tmp_path)
    # A session of its own: the signal below reaches the demo and its commands, like Ctrl-C.
    process = subprocess.Popen(
        [*DEMO, "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for line in process.stdout:
            if "$ python utils/download_data.py" in line:
                break
        os.killpg(process.pid, signal.SIGINT)
        rest = process.stdout.read()
        assert process.wait(timeout=120) == 130, rest
    finally:
        if process.poll() is None:
            process.kill()
    assert "tools/demo.py: interrupted; the HTTP server is stopped" in rest
    first_url = next(csv.DictReader((workdir / URL_LIST).open()))["url"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(first_url, timeout=5)


@needs_stages
def test_make_demo_runs_the_whole_pipeline(tmp_path):
    workdir = demo_workdir(tmp_path)
    quick = tmp_path / "quick.yaml"
    quick.write_text(yaml.safe_dump(QUICK_CONFIG))
    demo_args = shlex.join(
        ["--workdir", str(workdir), "--per-class", "12", "--config", str(quick)]
    )
    # -o: use the installed environment as it is (the test must not reinstall anything).
    result = subprocess.run(
        [
            "make",
            "-C",
            str(ROOT),
            "-o",
            ".venv/.imgclf-installed",
            "demo",
            f"DEMO_ARGS={demo_args}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in pipeline_steps([quick]):
        assert f"$ {step.command}" in result.stdout
    assert "Demo finished in" in result.stdout

    urls = list(csv.DictReader((workdir / URL_LIST).open()))
    assert len(urls) == 10 * 12 + 3
    # 15% of 12 rounds to 2 test images per class.
    assert sum(row["split"] == "test" for row in urls) == 20

    manifest = list(csv.DictReader((workdir / IMAGES / "manifest.csv").open()))
    by_url = {row["url"].split("/", 3)[3]: row for row in manifest}
    assert sum(row["status"] == "ok" for row in manifest) == 120
    assert by_url["broken/missing.jpg"]["reason"] == "http_404"
    assert by_url["broken/not-an-image.jpg"]["reason"] == "not_image"
    assert by_url["broken/truncated.jpg"]["reason"] == "corrupt"

    weights = workdir / "weights" / "mobilenet_v3_small.pth"
    assert weights.stat().st_size > 1_000_000
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert metrics  # the evaluation's own tests check its fields; here: it ran on our split
    for picture in ("logs.png", "confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (workdir / "pictures" / picture).stat().st_size > 0


def plan_for(workdir: Path, **options) -> dict:
    """The training plan the demo would write in `workdir` for these options."""
    demo = DemoOptions(workdir=workdir, **options)
    rows, _planted, _description = plan_url_list(demo)
    configs = [*CONFIGS, *demo.extra_configs]
    return training_plan(demo.command_line(), rows, configs, workdir)


def test_a_rerun_resumes_only_the_training_that_was_interrupted(tmp_path):
    workdir = demo_workdir(tmp_path)
    plan = plan_for(workdir, per_class=4)
    assert plan["logdir"] == "logs/demo"  # configs/demo.yaml's args.logdir
    assert not interrupted_training(workdir, plan, IMAGES)  # a first run
    mark_training_started(workdir, plan)
    (workdir / IMAGES).mkdir(parents=True)
    (workdir / IMAGES / "manifest.csv").write_text("url,label\n")
    assert interrupted_training(workdir, plan, IMAGES)
    mark_training_done(workdir)
    assert not interrupted_training(workdir, plan, IMAGES)  # a finished run: start over


def test_a_rerun_with_other_options_or_without_the_download_is_refused(tmp_path):
    workdir = demo_workdir(tmp_path)
    mark_training_started(workdir, plan_for(workdir, per_class=4))
    marker = workdir / PENDING_TRAINING
    start_over = f"delete {marker} and {workdir}/logs/demo/ to start over."
    with pytest.raises(InputError) as error:
        interrupted_training(workdir, plan_for(workdir, per_class=5), IMAGES)
    assert str(error.value) == (
        f"{marker}: the interrupted demo training was started with other options (--data "
        f"{ROOT}/data/demo/sign_language_digits --test-fraction 0.15 --seed 0 --per-class 4); "
        f"rerun with those to resume it, or {start_over}"
    )
    with pytest.raises(InputError) as error:
        interrupted_training(workdir, plan_for(workdir, per_class=4), IMAGES)
    assert str(error.value) == (
        f"{marker}: the download of the interrupted demo training ({workdir / IMAGES}/) is "
        f"gone, so it can't be resumed on the same images; {start_over}"
    )


@pytest.mark.slow
@needs_stages
def test_rerun_after_an_interrupted_training_keeps_the_download_and_resumes(tmp_path):
    workdir = demo_workdir(tmp_path)
    quick = {**QUICK_CONFIG, "stages": {"train": {**QUICK_CONFIG["stages"]["train"]}}}
    quick["stages"]["train"]["num_epochs"] = 2
    # Ctrl-C inside the training, right after epoch 1's checkpoint (tests/train/train_helpers):
    # a resumed run starts at epoch 2, so it does not fire again.
    interrupt = {"_target_": "train_helpers.InterruptAfterEpoch", "epoch": 1}
    quick["stages"]["train"]["callbacks"] = {"interrupt": interrupt}
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump(quick))
    command = [*DEMO, "--workdir", str(workdir), "--per-class", "6", "--config", str(config)]
    paths = [str(ROOT / "tests" / "train"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}

    stopped = subprocess.run(command, capture_output=True, text=True, env=env)
    assert stopped.returncode == 130, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert "demo stopped: step 3 (training mobilenet_v3_small) exited with code 130" in (
        stopped.stdout
    )
    manifest = (workdir / IMAGES / "manifest.csv").read_bytes()
    url_list = (workdir / URL_LIST).read_bytes()

    resumed = subprocess.run(command, capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "$ python utils/download_data.py" not in resumed.stdout  # the download is kept
    assert (workdir / IMAGES / "manifest.csv").read_bytes() == manifest
    assert (workdir / URL_LIST).read_bytes() == url_list
    training = pipeline_steps([config])[1].command
    assert f"$ {training} --autoresume last" in resumed.stdout
    assert "resumed from logs/demo/checkpoints/last_full.pth: stage 'train', epoch 1 of 2" in (
        resumed.stdout
    )
    assert "Demo finished in" in resumed.stdout
    assert (workdir / "reports" / "metrics.json").is_file()
    assert not (workdir / PENDING_TRAINING).exists()  # a further rerun starts over
