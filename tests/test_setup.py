"""The environment `make setup` builds: Catalyst 21.12 patched so multi-config merges work and
a bad config file is one sentence."""

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_catalyst_patch_is_applied():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "patch_catalyst.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "catalyst is patched" in result.stdout


def test_catalyst_merges_two_configs(tmp_path):
    # The exact path `catalyst-dl run --config a.yaml b.yaml` takes before our code is imported.
    from catalyst.utils.config import load_config
    from catalyst.utils.misc import merge_dicts

    base = tmp_path / "a.yaml"
    override = tmp_path / "b.yaml"
    base.write_text(yaml.safe_dump({"model": {"arch": "mobilenet_v3_small", "pretrained": None}}))
    override.write_text(yaml.safe_dump({"model": {"arch": "resnet18"}}))
    merged = merge_dicts(load_config(str(base)), load_config(str(override)))
    assert merged == {"model": {"arch": "resnet18", "pretrained": None}}


@pytest.fixture(scope="module")
def patched_catalyst(tmp_path_factory) -> Path:
    """A copy of the installed Catalyst with tools/patch_catalyst.py applied (the shared venv
    itself is only changed by `make setup`)."""
    import catalyst

    copy = tmp_path_factory.mktemp("site") / "catalyst"
    shutil.copytree(Path(catalyst.__file__).parent, copy)
    patch = [sys.executable, str(ROOT / "tools" / "patch_catalyst.py"), "--root", str(copy)]
    subprocess.run(patch, check=True, capture_output=True)
    check = subprocess.run([*patch, "--check"], capture_output=True, text=True)
    assert check.returncode == 0 and "catalyst is patched" in check.stdout
    return copy


BAD_CONFIG_FILES = {
    "missing": (None, "does not exist."),
    "yaml syntax": ("data: [1, 2\n", "can't be read (while parsing a flow sequence"),
    "list": ("- data\n- model\n", "holds a list, not a mapping of keys."),
    "scalar": ("42\n", "holds a int, not a mapping of keys."),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG_FILES))
def test_catalyst_dl_loader_refuses_a_bad_config_file_in_one_sentence(
    case, patched_catalyst, tmp_path, capsys
):
    # The patched loader itself, on the installed Catalyst's load_config.
    spec = importlib.util.spec_from_file_location(
        "patched_misc", patched_catalyst / "dl" / "scripts" / "_misc.py"
    )
    misc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(misc)
    content, message = BAD_CONFIG_FILES[case]
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content)
    args = argparse.Namespace(configs=[str(ROOT / "configs" / "config.yaml"), str(path)])
    with pytest.raises(SystemExit) as exit_info:
        misc.parse_args_uargs(args, [])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"catalyst-dl run: error: config file {path} ") and message in error
    assert len(error.strip().splitlines()) == 1


def test_catalyst_dl_run_with_a_list_config_exits_2_without_traceback(patched_catalyst, tmp_path):
    listed = tmp_path / "listed.yaml"
    listed.write_text("- data\n- model\n")
    launcher = "import sys; from catalyst.dl.__main__ import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", launcher, "run", "--config", "configs/config.yaml", str(listed)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # The patched copy first, then this checkout.
        env={**os.environ, "PYTHONPATH": f"{patched_catalyst.parent}{os.pathsep}{ROOT}"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == (
        f"catalyst-dl run: error: config file {listed} holds a list, not a mapping of keys.\n"
    )


# Records each call of tools/install.sh's "python" as one line of arguments.
RECORDING_PYTHON = """#!/bin/sh
echo "$*" >> "$RECORD"
"""


def install_calls(folder: Path, torch_index_url: str | None, *options: str) -> list[str]:
    """The commands tools/install.sh runs, with a stand-in python that only records them."""
    folder.mkdir()
    python = folder / "python"
    python.write_text(RECORDING_PYTHON)
    python.chmod(0o755)
    record = folder / "calls.txt"
    environment = {name: value for name, value in os.environ.items() if name != "TORCH_INDEX_URL"}
    environment["RECORD"] = str(record)
    if torch_index_url:
        environment["TORCH_INDEX_URL"] = torch_index_url
    command = [str(ROOT / "tools" / "install.sh"), *options, str(python)]
    subprocess.run(command, env=environment, check=True)
    return record.read_text().splitlines()


def test_install_takes_torch_from_torch_index_url_first_and_keeps_the_pins(tmp_path):
    index = "http://127.0.0.1:9/whl/cpu"
    calls = install_calls(tmp_path / "cpu", index)
    torch_at = next(n for n, call in enumerate(calls) if f"--index-url {index}" in call)
    assert calls[torch_at].endswith("--no-deps -c constraints.txt torch torchvision")
    requirements_at = next(n for n, call in enumerate(calls) if "-r requirements.txt" in call)
    assert torch_at < requirements_at  # so the default index's CUDA build is never fetched
    default = install_calls(tmp_path / "default", None)
    assert [call for call in default if "--index-url" in call] == []
    assert len(default) == len(calls) - 1


def test_install_dependencies_only_leaves_out_the_one_step_that_reads_pyproject(tmp_path):
    # The Dockerfile's install layer: pyproject.toml is not copied before it.
    everything = install_calls(tmp_path / "all", None)
    dependencies = install_calls(tmp_path / "dependencies", None, "--dependencies-only")
    assert everything[-1].endswith("--no-deps --no-build-isolation -e .")
    assert dependencies == everything[:-1]
