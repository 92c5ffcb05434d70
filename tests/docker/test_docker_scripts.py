"""docker/build.sh, run.sh and run_volume.sh against a stand-in `docker` recording its arguments.

No Docker engine runs in CI: these tests check what the scripts would ask Docker to do, from a
current directory outside the project, with the argument handling a user relies on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CONTAINER_DATA = "/home/imgclf/imgclf/data"

# Records its arguments as JSON and exits with $FAKE_DOCKER_EXIT (0 by default).
FAKE_DOCKER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_DOCKER_RECORD"], "w") as handle:
    json.dump(sys.argv[1:], handle)
sys.exit(int(os.environ.get("FAKE_DOCKER_EXIT", "0")))
"""


@pytest.fixture
def run_script(tmp_path):
    """Run docker/<name> from `tmp_path/elsewhere` with the stand-in docker first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    record = tmp_path / "docker-args.json"

    def run(name: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list | None]:
        record.unlink(missing_ok=True)
        full_env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_DOCKER_RECORD": str(record),
            **env,
        }
        for name_to_drop in ("IMGCLF_IMAGE", "IMGCLF_TAG", "IMGCLF_CA_BUNDLE", "IMGCLF_PORT"):
            if name_to_drop not in env:
                full_env.pop(name_to_drop, None)
        result = subprocess.run(
            [str(DOCKER / name), *args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        recorded = json.loads(record.read_text()) if record.exists() else None
        return result, recorded

    run.cwd = cwd
    return run


def host_id_args() -> list[str]:
    if os.getuid() == 0 or os.getgid() == 0:
        return []  # root's ids exist in the base image: the Dockerfile's defaults apply
    return ["--build-arg", f"USER_UID={os.getuid()}", "--build-arg", f"USER_GID={os.getgid()}"]


def test_build_uses_the_project_as_context_from_any_directory(run_script):
    result, args = run_script("build.sh")
    assert result.returncode == 0, result.stderr
    expected = ["build", "--file", str(DOCKER / "Dockerfile"), "--tag", "imgclf:latest"]
    assert args == [*expected, *host_id_args(), str(ROOT)]


def test_build_passes_options_and_takes_the_image_name_from_the_environment(run_script):
    # Build arguments of docker/Dockerfile (docs/docker.md): a mirror, a CPU-only torch index.
    options = [
        "--build-arg",
        "INDEX_URL=https://mirror.example/simple",
        "--build-arg",
        "EXTRA_INDEX_URLS=https://mirror.example/extra/simple",
        "--build-arg",
        "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
        "--no-cache",
    ]
    result, args = run_script("build.sh", *options, IMGCLF_IMAGE="reg/imgclf", IMGCLF_TAG="v2")
    assert result.returncode == 0, result.stderr
    assert args[args.index("--tag") + 1] == "reg/imgclf:v2"
    assert args[-len(options) - 1 :] == [*options, str(ROOT)]


def test_build_gives_a_ca_bundle_as_the_build_secret(run_script, tmp_path):
    bundle = tmp_path / "company-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    result, args = run_script("build.sh", IMGCLF_CA_BUNDLE=str(bundle))
    assert result.returncode == 0, result.stderr
    assert args[args.index("--secret") + 1] == f"id=ca_bundle,src={bundle}"
    result, args = run_script("build.sh", IMGCLF_CA_BUNDLE=str(tmp_path / "missing.pem"))
    assert result.returncode == 2
    assert args is None
    assert "IMGCLF_CA_BUNDLE=" in result.stderr and "is not a file" in result.stderr


def test_run_starts_a_throwaway_container_with_the_command(run_script):
    result, args = run_script("run.sh", "make", "demo", IMGCLF_TAG="dev")
    assert result.returncode == 0, result.stderr
    # stdin is not a terminal here: --interactive without --tty, so pipes and CI work.
    # --no-healthcheck: the image's HEALTHCHECK asks the service, which a command does not start.
    assert args == [
        "run",
        "--rm",
        "--interactive",
        "--no-healthcheck",
        "imgclf:dev",
        "make",
        "demo",
    ]


def test_run_without_a_command_serves_on_the_published_port(run_script):
    # The image's default command is the HTTP service on the container's port 8000.
    result, args = run_script("run.sh")
    assert result.returncode == 0, result.stderr
    assert args == ["run", "--rm", "--interactive", "--publish", "8000:8000", "imgclf:latest"]
    result, args = run_script("run.sh", IMGCLF_PORT="127.0.0.1:8080")
    assert args[args.index("--publish") + 1] == "127.0.0.1:8080:8000"


def test_run_passes_dockers_exit_code_on(run_script):
    result, _ = run_script("run.sh", "false", FAKE_DOCKER_EXIT="3")
    assert result.returncode == 3


def owner_of(folder: Path) -> str:
    return f"{folder.stat().st_uid}:{folder.stat().st_gid}"


def test_run_volume_mounts_the_projects_data_folder_by_default(run_script):
    result, args = run_script("run_volume.sh")
    assert result.returncode == 0, result.stderr
    volume = f"{ROOT / 'data'}:{CONTAINER_DATA}"
    # As the folder's owner (root's data/ included), with the image's group 0 to write the
    # project; bash, since the image's default command (the service) needs no data folder.
    user = ["--user", owner_of(ROOT / "data"), "--group-add", "0"]
    assert args == [
        "run",
        "--rm",
        "--interactive",
        *user,
        "--volume",
        volume,
        "--no-healthcheck",
        "imgclf:latest",
        "bash",
    ]


def test_run_volume_resolves_a_relative_folder_and_passes_the_command(run_script):
    data = run_script.cwd / "my data"
    data.mkdir()
    command = ["python", "utils/download_data.py", "--urls", "data/urls.csv"]
    result, args = run_script("run_volume.sh", "my data", *command)
    assert result.returncode == 0, result.stderr
    # The command's own options go through untouched.
    volume = f"{data}:{CONTAINER_DATA}"
    assert args[args.index("--volume") + 1 :] == [
        volume,
        "--no-healthcheck",
        "imgclf:latest",
        *command,
    ]


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another uid needs root")
def test_run_volume_runs_as_the_folders_owner_whoever_it_is(run_script):
    data = run_script.cwd / "theirs"
    data.mkdir()
    os.chown(data, 4321, 4322)
    result, args = run_script("run_volume.sh", "theirs", "make", "demo")
    assert result.returncode == 0, result.stderr
    assert args[args.index("--user") + 1] == "4321:4322"


def test_run_volume_refuses_a_folder_its_owner_cannot_write(run_script):
    data = run_script.cwd / "read-only"
    data.mkdir()
    data.chmod(0o555)
    result, args = run_script("run_volume.sh", "read-only", "bash")
    assert result.returncode == 2
    assert args is None
    assert result.stderr.count("\n") == 1  # one sentence, no trace
    assert f"{data} (mode 555) is not writable by its owner; run chmod u+w" in result.stderr


def test_run_volume_refuses_a_missing_folder_without_calling_docker(run_script):
    result, args = run_script("run_volume.sh", "no-such-dir", "bash")
    assert result.returncode == 2
    assert args is None
    assert result.stderr.count("\n") == 1  # one sentence, no trace
    assert "no-such-dir is not a folder" in result.stderr


@pytest.mark.parametrize("name", ["build.sh", "run.sh", "run_volume.sh"])
def test_help_prints_the_usage_line_without_calling_docker(run_script, name):
    result, args = run_script(name, "--help")
    assert result.returncode == 0
    assert args is None
    assert result.stdout.startswith(f"Usage: docker/{name}")
    # The usage shown is the script's own top comment: one source for both.
    assert result.stdout.splitlines()[0] in (DOCKER / name).read_text().splitlines()[1]
