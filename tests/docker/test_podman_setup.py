"""tools/podman_setup.sh and `make test-docker` on a machine without a container engine.

The set-up script runs for real with stand-ins for podman and debootstrap that record what they
are asked to do (installing packages and bootstrapping Debian take minutes and root's machine);
`make test-docker` runs for real with no `docker` on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "tools" / "podman_setup.sh"

# podman: records each call as JSON; `image exists` answers $FAKE_IMAGE_EXISTS, `pull` fails
# (no registry), `import` keeps the tar it is given on stdin.
FAKE_PODMAN = f"""#!{sys.executable}
import json, os, shutil, sys
record = os.environ["FAKE_RECORD"]
with open(record, "a") as handle:
    handle.write(json.dumps({{"argv": sys.argv[1:], "format": os.environ.get("BUILDAH_FORMAT"),
                             "conf": os.environ.get("CONTAINERS_CONF")}}) + "\\n")
if sys.argv[1:3] == ["image", "exists"]:
    sys.exit(int(os.environ.get("FAKE_IMAGE_EXISTS", "1")))
if sys.argv[1] == "pull":
    sys.exit(125)
if sys.argv[1] == "import":
    with open(record + ".tar", "wb") as tar:
        shutil.copyfileobj(sys.stdin.buffer, tar)
"""
# debootstrap: records its arguments and leaves the interpreter a real bootstrap would.
FAKE_DEBOOTSTRAP = f"""#!{sys.executable}
import json, os, pathlib, sys
with open(os.environ["FAKE_RECORD"] + ".debootstrap", "w") as handle:
    json.dump(sys.argv[1:], handle)
root = pathlib.Path(sys.argv[-2])
for folder in ("usr/bin", "usr/local/bin", "var/lib/apt/lists"):
    (root / folder).mkdir(parents=True, exist_ok=True)
(root / "usr/bin/python3.11").write_text("")
"""


@pytest.fixture
def fake_tools(tmp_path):
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for name, text in [("podman", FAKE_PODMAN), ("debootstrap", FAKE_DEBOOTSTRAP)]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "runc").symlink_to("/bin/true")
    record = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["FAKE_RECORD"] = str(record)
    return env, record


def calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_help_prints_the_usage():
    result = subprocess.run([str(SETUP), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: tools/podman_setup.sh [--stand-in] [STATE_DIR]")


needs_root = pytest.mark.skipif(os.getuid() != 0, reason="the set-up refuses to run without root")


@needs_root
def test_setup_writes_shim_and_config_and_bootstraps_a_stand_in_base(fake_tools, tmp_path):
    env, record = fake_tools
    state = tmp_path / "state"
    result = subprocess.run([str(SETUP), str(state)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # stdout is only what to export: `eval "$(tools/podman_setup.sh)"` sets the shell up.
    assert result.stdout.splitlines() == [
        f'export PATH="{state}/bin:$PATH"',
        f'export CONTAINERS_CONF="{state}/containers.conf"',
    ]
    conf = (state / "containers.conf").read_text()
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' in conf
    assert 'runtime = "runc"' in conf
    # The pull fails (no registry), so the base is bootstrapped from Debian's packages.
    argv = [call["argv"] for call in calls(record)]
    assert argv[0] == ["image", "exists", "python:3.11-slim"]
    assert argv[1] == ["pull", "docker.io/library/python:3.11-slim"]
    debootstrap = json.loads(Path(f"{record}.debootstrap").read_text())
    assert debootstrap[:3] == [
        "--variant=minbase",
        "--include=python3,python3-venv,python3-pip,ca-certificates",
        "bookworm",
    ]
    assert argv[2][0] == "import" and argv[2][-2:] == ["-", "python:3.11-slim"]
    assert all(call["conf"] == str(state / "containers.conf") for call in calls(record))
    with tarfile.open(f"{record}.tar") as tar:
        for name in ("python3.11", "python3", "python"):
            link = tar.getmember(f"./usr/local/bin/{name}")
            assert link.issym() and link.linkname == "/usr/bin/python3.11"
    assert not Path(debootstrap[-2]).exists()  # the bootstrap folder is cleaned up


@needs_root
def test_eval_of_its_output_puts_the_docker_shim_first_and_the_shim_runs_podman(
    fake_tools, tmp_path
):
    env, record = fake_tools
    state = tmp_path / "state"
    env["FAKE_IMAGE_EXISTS"] = "0"  # the base image is there: nothing to bootstrap
    shell = f'eval "$({SETUP} {state})" && command -v docker && docker build --tag x .'
    result = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(state / "bin" / "docker")]
    build = calls(record)[-1]
    # Docker's image format, so podman keeps the Dockerfile's HEALTHCHECK.
    assert build == {
        "argv": ["build", "--tag", "x", "."],
        "format": "docker",
        "conf": str(state / "containers.conf"),
    }


def without_docker_on_path() -> str | None:
    """PATH minus the folders that hold a `docker`, or None when that would drop the system's."""
    folders = os.environ["PATH"].split(os.pathsep)
    kept = [folder for folder in folders if not (Path(folder) / "docker").exists()]
    if not any((Path(folder) / "make").exists() for folder in kept):
        return None
    return os.pathsep.join(kept)


def test_make_test_docker_without_an_engine_skips_and_says_how_to_get_one():
    if os.environ.get("IMGCLF_CONTAINER_TESTS"):
        pytest.skip("this is the run of make test-docker itself")
    path = without_docker_on_path()
    if path is None:
        pytest.skip("`docker` sits beside the system's own tools here")
    result = subprocess.run(
        [shutil.which("make"), "-C", str(ROOT), "-o", ".venv/.imgclf-installed", "test-docker"],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SKIPPED" in result.stdout
    assert "no `docker` on PATH" in result.stdout
    assert 'eval "$(tools/podman_setup.sh)"' in result.stdout
