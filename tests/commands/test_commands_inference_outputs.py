"""utils/inference.py checks where it will write before it does any work (issue 16, item 14)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.support.readonly import read_only_wrapper
from tests.support.trained import ROOT, cli, fitted_weights, tiny_root

__all__ = ["cli", "fitted_weights", "tiny_root"]
SCRIPT = ROOT / "utils" / "inference.py"


@pytest.mark.parametrize("option", ["--out", "--pictures"])
def test_an_output_folder_that_is_a_file_is_refused_before_the_evaluation(
    cli, fitted_weights, tmp_path, capsys, option
):
    existing = tmp_path / "report.txt"
    existing.write_text("keep me")
    folders = {"--out": tmp_path / "reports", "--pictures": tmp_path / "pictures"}
    folders[option] = existing
    args = ["--weights", str(fitted_weights), "--bootstrap", "10"]
    args += [f"{name}={path}" for name, path in folders.items()]
    assert cli.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error
        == f"inference.py: error: {option} {existing} is a file, not a folder; pass a folder."
    )
    assert existing.read_text() == "keep me"
    # Nothing was evaluated: no report or picture anywhere.
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.png"))


def run_inference(*args: str, wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*wrapper, sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # two fresh processes that load torch
def test_export_into_a_read_only_folder_is_one_sentence(fitted_weights, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    weights = shutil.copy(fitted_weights, folder / fitted_weights.name)  # default: beside it
    wrapper = read_only_wrapper(folder)
    for extra in ([], ["--export-to", str(folder / "chosen.onnx")]):
        done = run_inference(
            "--weights", str(weights), "--export", "onnx", *extra, wrapper=wrapper
        )
        assert done.returncode == 2, done.stderr
        message = done.stderr.strip()
        assert message.count("\n") == 0 and "Traceback" not in message
        assert "is not writable" in message and str(folder) in message
    folder.chmod(0o755)
    assert sorted(path.name for path in folder.iterdir()) == [fitted_weights.name]


def test_export_to_chooses_the_exported_file(cli, fitted_weights, tiny_root, tmp_path, capsys):
    target = tmp_path / "deploy" / "classifier.ts"
    assert cli.main(["--weights", str(fitted_weights), "--export", "torchscript",
                     "--export-to", str(target)]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith(f"wrote {target}")
    assert not fitted_weights.with_suffix(".ts").exists()
    image = tiny_root / "circle" / "010.jpg"
    assert cli.main(["--weights", str(target), "--predict", str(image)]) == 0
    assert capsys.readouterr().out.split()[1] == "circle"
    with pytest.raises(SystemExit) as usage:
        cli.main(["--weights", str(fitted_weights), "--export-to", str(target)])
    assert usage.value.code == 2
