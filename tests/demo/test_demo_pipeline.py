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

from imgclf.demo.pipeline import IMAGES, URL_LIST, clear_previous_download, pipeline_steps
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
    "data": {"img_size": 32, "batch_size": 16, "num_workers": 0},
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
