"""What the training stage refuses before any work: unknown keys in the config files given to
`catalyst-dl run`, a fresh start over an interrupted run, an unsupported Catalyst."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from train_helpers import (
    CONFIGS,
    ROOT,
    catalyst_run,
    merged_config,
    subprocess_environment,
    tiny_overrides,
    write_yaml,
)

from imgclf.errors import EXIT_BAD_INPUT, InputError
from imgclf.train.catalyst_compat import check_catalyst_version
from imgclf.train.config_keys import command_line_configs
from imgclf.train.resume import FINISHED_FILE
from imgclf.train.runner import ImageClassifierRunner, with_file_seed

CATALYST_DL = "/venv/bin/catalyst-dl"  # only its name matters to command_line_configs


def argv(*configs) -> list[str]:
    return [CATALYST_DL, "run", "--config", *map(str, configs)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("modle:\n  arch: resnet18\n", "Unknown config key modle in {path}; did you mean model?"),
        ("args:\n  seed: abc\n", "args.seed is 'abc' in {path}; it must be an integer."),
    ],
    ids=["typo", "wrong type"],
)
def test_each_config_file_is_checked_and_named(content, message, tmp_path):
    path = tmp_path / "override.yaml"
    path.write_text(content)
    with pytest.raises(InputError) as error:
        command_line_configs(argv(CONFIGS / "config.yaml", path))
    assert message.replace("{path}", str(path)) in str(error.value)
    assert str(path) in str(error.value)


def test_files_seed_is_used_unless_seed_is_given(tmp_path, monkeypatch):
    # catalyst-dl run replaces the files' args.seed with its --seed default (42).
    override = write_yaml(tmp_path / "seed.yaml", {"args": {"seed": 7}})
    files = command_line_configs(argv(CONFIGS / "config.yaml", override))
    config = {"args": {"seed": 42, "logdir": "x"}}
    monkeypatch.setattr(sys, "argv", argv(CONFIGS / "config.yaml", override))
    assert with_file_seed(config, files)["args"] == {"seed": 7, "logdir": "x"}
    monkeypatch.setattr(sys, "argv", [*argv(CONFIGS / "config.yaml", override), "--seed", "42"])
    assert with_file_seed(config, files) == config


def test_every_shipped_config_file_passes_the_key_check(tmp_path):
    empty = tmp_path / "empty.yaml"  # an override file with nothing in it overrides nothing
    empty.write_text("")
    no_args = tmp_path / "no_args.yaml"
    no_args.write_text("args:\n")
    files = [*sorted(CONFIGS.glob("*.yaml")), empty, no_args]
    read = command_line_configs(argv(*files))
    assert [path for path, _ in read] == files
    assert with_file_seed({"args": {"seed": 42}}, read) == {"args": {"seed": 42}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"data": {"img_sise": 128}}, "Unknown config key data.img_sise in {path}; did you mean"),
        ({"args": {"seed": "abc"}}, "args.seed is 'abc' in {path}; it must be an integer."),
    ],
    ids=["typo", "seed"],
)
def test_catalyst_dl_run_refuses_a_bad_key_in_a_config_file(override, message, tmp_path):
    images = tmp_path / "images"  # never read: the check comes first
    path = write_yaml(tmp_path / "mine.yaml", merged_config(overrides=override))
    tiny = write_yaml(tmp_path / "tiny.yaml", tiny_overrides(tmp_path, images))
    result = catalyst_run(CONFIGS / "config.yaml", tiny, path)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert message.replace("{path}", str(path)) in result.stderr.strip().splitlines()[-1]


def test_fresh_start_over_an_interrupted_run_is_refused(tiny_image_folder, tmp_path, capsys):
    config = merged_config(
        CONFIGS / "config.yaml", overrides=tiny_overrides(tmp_path, tiny_image_folder)
    )
    last = tmp_path / "logs" / "checkpoints" / "last_full.pth"
    last.parent.mkdir(parents=True)
    torch.save({"stage_key": "train", "stage_epoch_step": 1}, last)
    with pytest.raises(SystemExit) as exit_info:
        ImageClassifierRunner(config=config)
    assert exit_info.value.code == EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"catalyst-dl run: error: {tmp_path / 'logs'} holds an unfinished run (checkpoint "
        f"{last}); continue it with the same command plus --resume {last} (or --autoresume "
        "last), or start a new run with --logdir <new folder> (or delete the folder)."
    )
    # A finished run (its weights exported) may be started over; the new run un-marks it and
    # drops the finished run's last checkpoint, so that the new run, interrupted before its
    # first epoch, can be started over again (and --autoresume finds nothing of the old run).
    (tmp_path / "logs" / FINISHED_FILE).write_text("{}")
    ImageClassifierRunner(config=config)
    assert not (tmp_path / "logs" / FINISHED_FILE).exists() and not last.exists()
    ImageClassifierRunner(config=config)


def test_unsupported_catalyst_is_one_sentence():
    with pytest.raises(InputError, match=r"catalyst==21\.12 but catalyst 22\.2 is installed"):
        check_catalyst_version("22.2")
    # The experiment package says so before importing anything that release lacks.
    code = "import catalyst; catalyst.__version__ = '22.2'; import imgclf.train"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=subprocess_environment(),
    )
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    assert result.stderr.startswith(
        "catalyst-dl run: error: imgclf trains with catalyst==21.12 but catalyst 22.2"
    )
    assert "Traceback" not in result.stderr
