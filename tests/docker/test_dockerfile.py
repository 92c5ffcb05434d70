"""docker/Dockerfile and .dockerignore: the image is built by the same steps as `make setup`.

The image build itself is not exercised here (no Docker engine in CI); hadolint lints the file in
`make lint`. These tests pin what the build depends on.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


def makefile_rule(target: str) -> tuple[list[str], list[str]]:
    """Prerequisites and recipe lines of `target` in the Makefile (variables expanded)."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) :?= (.*)$", text, re.MULTILINE))

    def expand(value: str) -> str:
        while match := re.search(r"\$\((\w+)\)", value):
            value = value.replace(match.group(0), variables.get(match.group(1), ""))
        return value

    lines = text.splitlines()
    for index, line in enumerate(lines):
        name, colon, prerequisites = line.partition(":")
        if colon and expand(name.strip()) == target and not line.startswith("\t"):
            recipe = []
            for body in lines[index + 1 :]:
                if not body.startswith("\t"):
                    break
                recipe.append(expand(body.strip()))
            return expand(prerequisites).split(), recipe
    raise AssertionError(f"no rule for {target} in the Makefile")


def test_image_is_python_311_slim_with_a_non_root_user():
    steps = instructions(ROOT / "docker" / "Dockerfile")
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users, "the container must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_default_command_serves_on_the_exposed_port_and_the_healthcheck_asks_it():
    steps = dict(instructions(ROOT / "docker" / "Dockerfile"))
    command = json.loads(steps["CMD"])
    assert command[:2] == ["python", "utils/serve.py"]
    # 0.0.0.0: a published port reaches the container's interface, not its loopback.
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert steps["EXPOSE"] == port
    assert f"http://127.0.0.1:{port}/health/live" in steps["HEALTHCHECK"]
    assert "--publish" in (ROOT / "docker" / "run.sh").read_text()


def test_workdir_is_where_the_scripts_mount_data():
    steps = instructions(ROOT / "docker" / "Dockerfile")
    workdir = [args for keyword, args in steps if keyword == "WORKDIR"][-1]
    common = (ROOT / "docker" / "common.sh").read_text()
    assert f"container_project={workdir}\n" in common
    assert f"PATH={workdir}/.venv/bin:" in dict(steps)["ENV"]


def install_step(steps: list[tuple[str, str]]) -> int:
    """The index of the RUN that installs the dependencies with tools/install.sh."""
    found = [
        n for n, (keyword, args) in enumerate(steps) if keyword == "RUN" and "install.sh" in args
    ]
    assert len(found) == 1, found
    return found[0]


def copied_sources(steps: list[tuple[str, str]]) -> set[str]:
    sources = set()
    for keyword, args in steps:
        if keyword == "COPY":
            words = [word for word in args.split() if not word.startswith("--")][:-1]
            sources.update(word.rstrip("/") for word in words)
    return sources


def test_install_layer_copies_only_what_the_install_reads():
    steps = instructions(ROOT / "docker" / "Dockerfile")
    install_at = install_step(steps)
    # Exactly the setup stamp's prerequisites but pyproject.toml (read only by the package's own
    # editable install, which --dependencies-only leaves to `make setup`): an edit to anything
    # else (README.md, the Makefile, the code, a ruff setting) must not invalidate the layer that
    # downloads 3 GB.
    prerequisites, recipe = makefile_rule(".venv/.imgclf-installed")
    assert copied_sources(steps[:install_at]) == set(prerequisites) - {"pyproject.toml"}
    # The layer runs the setup recipe's own steps: a venv, then tools/install.sh into it.
    install = "python3 -m venv .venv && tools/install.sh --dependencies-only .venv/bin/python"
    assert install in steps[install_at][1]
    assert "tools/install.sh .venv/bin/python" in recipe
    # Then everything is copied and `make setup` finishes the job (stamp, editable package).
    after = steps[install_at + 1 :]
    assert [args for keyword, args in after if keyword == "COPY"] == ["--chown=${USER_UID}:0 . ."]
    setup = [args for keyword, args in after if keyword == "RUN" and "make setup" in args]
    assert len(setup) == 1
    assert after.index(("RUN", setup[0])) > after.index(("COPY", "--chown=${USER_UID}:0 . ."))
    assert makefile_rule("setup")[0] == [".venv/.imgclf-installed"]


def test_install_takes_a_mirror_and_a_ca_bundle_and_caches_pip_outside_the_image():
    steps = instructions(ROOT / "docker" / "Dockerfile")
    install_at = install_step(steps)
    run = steps[install_at][1]
    for name in ("INDEX_URL", "EXTRA_INDEX_URLS", "TORCH_INDEX_URL"):
        assert ("ARG", f'{name}=""') in steps[:install_at]
    assert 'export PIP_INDEX_URL="${INDEX_URL}"' in run
    assert 'export PIP_EXTRA_INDEX_URL="${EXTRA_INDEX_URLS}"' in run
    # TORCH_INDEX_URL reaches tools/install.sh as the build argument's environment variable.
    assert "TORCH_INDEX_URL" in (ROOT / "tools" / "install.sh").read_text()
    # The cache mount is where pip looks, whatever HOME is.
    assert run.startswith("--mount=type=cache,target=/root/.cache/pip ")
    assert "export PIP_CACHE_DIR=/root/.cache/pip" in run
    # The CA bundle comes as a build secret (never stored in a layer), the id build.sh gives it.
    assert "--mount=type=secret,id=ca_bundle " in run
    assert "export PIP_CERT=/run/secrets/ca_bundle" in run
    assert "id=ca_bundle,src=" in (ROOT / "docker" / "build.sh").read_text()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (enough of its rules for ours)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        alternatives = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        for prefix in prefixes:
            for alternative in alternatives:
                if fnmatch.fnmatchcase(prefix, alternative) or (
                    pattern.startswith("**/")
                    and fnmatch.fnmatchcase(prefix.split("/")[-1], alternative)
                ):
                    return True
    return False


def test_dockerignore_keeps_outputs_and_environments_out_but_the_sources_in():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(pattern.startswith("!") for pattern in patterns)
    left_out = [
        ".git/HEAD",
        ".venv/bin/python",
        "data/images/0/abc.jpg",
        "data/cache/index.json",
        "data/demo/images/manifest.csv",
        "data/demo/urls/urls.csv",
        "data/demo/images/.cache/decoded.npy",
        "logs/train/checkpoints/last.pth",
        "reports/metrics.json",
        "imgclf/__pycache__/errors.cpython-311.pyc",
    ]
    kept = [
        "Makefile",
        "README.md",
        "requirements.txt",
        "pyproject.toml",
        "tools/install.sh",
        "tools/patch_catalyst.py",
        "imgclf/__init__.py",
        "configs/config.yaml",
        "utils/inference.py",
        "weights/mobilenet_v3_small.pth",
        "data/demo/sign_language_digits/0/IMG_1118.jpg",
        "data/demo/sign_language_digits/LICENSE",
        "data/demo/sign_language_digits/NOTICE",
    ]
    assert [path for path in left_out if not dockerignored(path, patterns)] == []
    assert [path for path in kept if dockerignored(path, patterns)] == []
