"""docker/Dockerfile and .dockerignore: the image is built by the same steps as `make setup`.

The image build itself is not exercised here (no Docker engine in CI); hadolint lints the file in
`make lint`. These tests pin what the build depends on.
"""

from __future__ import annotations

import fnmatch
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
    assert ("CMD", '["bash"]') in steps


def test_workdir_is_where_the_scripts_mount_data():
    steps = instructions(ROOT / "docker" / "Dockerfile")
    workdir = [args for keyword, args in steps if keyword == "WORKDIR"][-1]
    common = (ROOT / "docker" / "common.sh").read_text()
    assert f"container_project={workdir}\n" in common
    assert f"PATH={workdir}/.venv/bin:" in dict(steps)["ENV"]


def test_image_runs_make_setup_after_copying_everything_it_reads():
    steps = instructions(ROOT / "docker" / "Dockerfile")
    setup_at = steps.index(("RUN", "make setup"))
    copied = set()
    for keyword, args in steps[:setup_at]:
        if keyword == "COPY":
            sources = [word for word in args.split() if not word.startswith("--")][:-1]
            copied.update(source.rstrip("/") for source in sources)
    # What the setup stamp depends on, what `pip install -e .` reads, and the Makefile itself.
    prerequisites, recipe = makefile_rule(".venv/.imgclf-installed")
    readme = re.search(r'^readme = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    needed = {*prerequisites, readme.group(1), "Makefile", "imgclf/__init__.py"}
    missing = {path for path in needed if path not in copied and path.split("/")[0] not in copied}
    assert not missing, f"COPY these before `RUN make setup`: {sorted(missing)}"
    # ...and `make setup` is what installs the project everywhere: tools/install.sh into .venv.
    assert makefile_rule("setup")[0] == [".venv/.imgclf-installed"]
    assert "tools/install.sh .venv/bin/python" in recipe


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
