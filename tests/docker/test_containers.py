"""The image built and run for real: `make test-docker` (not part of `make test`).

It builds the image with docker/build.sh, as the docs do, then runs real containers through
docker/run.sh and docker/run_volume.sh: the unprivileged user, a data folder owned by root (or
anyone), the quick demo over a mounted folder, `make test` inside the image, and the HTTP service
on a published port, checked with curl from the host on 127.0.0.1.

The engine is whatever `docker` is on PATH: Docker, or podman behind the shim that
tools/podman_setup.sh writes (docs/docker.md). Without one that answers, every test here skips
and says how to get one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DEMO_DATA = ROOT / "data" / "demo" / "sign_language_digits"
# The demo's quick settings (tests/demo/test_demo_pipeline.py): one small epoch on tiny images.
QUICK_CONFIG = {
    # min_epoch_images 0: one pass over the images, not the default's 1024 draws.
    "data": {"img_size": 32, "batch_size": 16, "num_workers": 0, "min_epoch_images": 0},
    "stages": {"train": {"num_epochs": 1, "scheduler": {"warmup_epochs": 0}}},
}
# Any uid other than root's and the image user's: the folder's owner, whoever it is.
OTHER_OWNER = (4321, 4321)
SETUP_HINT = (
    'on a Debian 12 machine without a Docker engine, as root: eval "$(tools/podman_setup.sh)" '
    "(docs/docker.md, Machines without a Docker engine)"
)


def engine_problem() -> str | None:
    """Why no container can run here, or None when `docker` answers."""
    if os.environ.get("IMGCLF_CONTAINER_TESTS") != "1":
        return "real containers run only in `make test-docker`"
    if shutil.which("docker") is None:
        return f"no `docker` on PATH (neither Docker nor the podman shim); {SETUP_HINT}"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within 120 s; {SETUP_HINT}"
    if info.returncode != 0:
        said = (info.stderr.strip().splitlines() or ["no message"])[-1]
        return f"no container engine answers `docker info` ({said}); {SETUP_HINT}"
    return None


pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]


def script(name: str, *args: str) -> list[str]:
    return [str(DOCKER / name), *args]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a docker/ script with stdin closed (so no --tty) and its output captured."""
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs
    )
    assert result.returncode == 0, (
        f"{command} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


@pytest.fixture(scope="session")
def image() -> str:
    """The image, built once per run by docker/build.sh (the layer cache makes rebuilds quick)."""
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    started = time.monotonic()
    subprocess.run([str(DOCKER / "build.sh")], stdin=subprocess.DEVNULL, check=True)
    print(f"docker/build.sh took {time.monotonic() - started:.0f} s")
    return f"{os.environ.get('IMGCLF_IMAGE', 'imgclf')}:{os.environ.get('IMGCLF_TAG', 'latest')}"


def image_user() -> str:
    """The uid:gid docker/build.sh gives the image's user: the host's, or 1000 for root."""
    if os.getuid() == 0 or os.getgid() == 0:
        return "1000:1000"
    return f"{os.getuid()}:{os.getgid()}"


def owned_folder(path: Path, owner: tuple[int, int] | None = None) -> Path:
    """`path` created as a plain 755 folder, given to `owner` (default: the caller, e.g. root)."""
    path.mkdir(parents=True)
    path.chmod(0o755)
    if owner:
        os.chown(path, *owner)
    return path


def owners_under(folder: Path) -> set[tuple[int, int]]:
    return {(p.lstat().st_uid, p.lstat().st_gid) for p in [folder, *folder.rglob("*")]}


def test_a_readme_edit_reuses_the_install_layer(image, tmp_path):
    # A copy of the project with README.md edited, built by its own docker/build.sh.
    project = tmp_path / "project"
    leave_out = (".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "logs", "reports")
    shutil.copytree(ROOT, project, symlinks=True, ignore=shutil.ignore_patterns(*leave_out))
    with (project / "README.md").open("a") as readme:
        readme.write("\nAn edit that must not reinstall torch.\n")
    tag = "readme-edit"
    build = subprocess.run(
        [str(project / "docker" / "build.sh")],
        env={**os.environ, "IMGCLF_TAG": tag},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    subprocess.run(["docker", "rmi", f"{image.rsplit(':', 1)[0]}:{tag}"], capture_output=True)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    lines = (build.stdout + build.stderr).splitlines()
    step = next(
        n for n, line in enumerate(lines) if "tools/install.sh --dependencies-only" in line
    )
    # podman: "--> Using cache <id>"; Docker BuildKit: "#12 CACHED".
    assert any(marker in lines[step + 1] for marker in ("Using cache", "CACHED")), lines[step:][:5]


def test_run_sh_runs_commands_as_the_unprivileged_user(image):
    result = run(script("run.sh", "sh", "-c", 'echo "$(id -u):$(id -g) $(id -un) $PWD"'))
    assert result.stdout.split() == [image_user(), "imgclf", "/home/imgclf/imgclf"]


def test_run_volume_writes_a_root_owned_folder_and_leaves_the_owners_files(image, tmp_path):
    # The data folder of a root user (CI, most servers): the case that gave "Permission denied".
    data = owned_folder(tmp_path / "data")
    probe = "mkdir -p data/new/deeper && echo written > data/new/deeper/file && id -u"
    result = run(script("run_volume.sh", str(data), "sh", "-c", probe))
    assert result.stdout.split()[-1] == str(os.getuid())
    assert (data / "new" / "deeper" / "file").read_text() == "written\n"
    assert owners_under(data) == {(os.getuid(), os.getgid())}


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another uid needs root")
def test_run_volume_runs_as_whoever_owns_the_folder(image, tmp_path):
    data = owned_folder(tmp_path / "data", OTHER_OWNER)
    # That uid has no account in the image: it still writes the folder, the project (logs/,
    # caches) and its home.
    probe = "echo x > data/file && mkdir -p logs/probe && touch ~/probe && id -u"
    result = run(script("run_volume.sh", str(data), "sh", "-c", probe))
    assert result.stdout.split()[-1] == str(OTHER_OWNER[0])
    assert owners_under(data) == {OTHER_OWNER}


def test_quick_demo_runs_over_a_mounted_folder_with_the_demo_data_copied_in(image, tmp_path):
    # The mount hides the image's data/, bundled demo data included: docs/docker.md says to copy
    # it into the folder first, as done here.
    owner = OTHER_OWNER if os.getuid() == 0 else None
    data = owned_folder(tmp_path / "data", owner)
    subprocess.run(["cp", "-r", str(ROOT / "data" / "demo"), f"{data}/"], check=True)
    (data / "quick.yaml").write_text(yaml.safe_dump(QUICK_CONFIG))
    if owner:
        for path in [data, *data.rglob("*")]:
            os.chown(path, *owner)
    demo_args = "DEMO_ARGS=--per-class 12 --config data/quick.yaml"
    result = run(script("run_volume.sh", str(data), "make", "demo", demo_args))
    assert "Demo finished in" in result.stdout
    manifest = (data / "demo" / "images" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 10 * 12 + 3  # header, 12 photos per class, three broken URLs
    assert owners_under(data) == {owner or (os.getuid(), os.getgid())}


def test_make_test_passes_inside_the_image(image):
    result = run(script("run.sh", "make", "test"))
    assert " passed" in result.stdout.splitlines()[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "30", *args],
        capture_output=True,
        text=True,
    )


def container_publishing(port: int) -> str | None:
    """The id of the running container that publishes host port `port`."""
    listing = subprocess.run(
        ["docker", "ps", "--format", "{{.ID}} {{.Ports}}"], capture_output=True, text=True
    )
    for line in listing.stdout.splitlines():
        container, _, ports = line.partition(" ")
        if f":{port}->8000" in ports:
            return container
    return None


@pytest.mark.skipif(
    not (ROOT / "utils" / "serve.py").exists(),
    reason="utils/serve.py (issue 12) is not in this checkout yet: docker/run.sh has no service",
)
def test_run_sh_serves_the_shipped_weights_on_the_published_port(image):
    if shutil.which("curl") is None:
        pytest.skip("the host has no curl")
    healthcheck = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Healthcheck}}", image],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "/health/live" in healthcheck.stdout  # kept by the image format (podman: docker)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        script("run.sh"),
        env={**os.environ, "IMGCLF_PORT": f"127.0.0.1:{port}"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while curl("--fail", f"{base}/health/ready").returncode != 0:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(1)
        photo = next(DEMO_DATA.glob("3/*.jpg"))
        answer = curl("--fail", "-F", f"file=@{photo}", f"{base}/predict")
        assert answer.returncode == 0, answer.stderr
        assert "mobilenet_v3_small" in answer.stdout
        assert json.loads(answer.stdout)
        # The image's HEALTHCHECK command, run in the serving container.
        container = container_publishing(port)
        assert container, "no running container publishes the port"
        probe = json.loads(healthcheck.stdout)["Test"][1:]
        assert subprocess.run(["docker", "exec", container, *probe]).returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert server.returncode == 0, output[-4000:]
