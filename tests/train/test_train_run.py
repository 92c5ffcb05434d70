"""Real `catalyst-dl run`s on tiny generated image folders: outputs, determinism, resume, DDP."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score
from train_helpers import (
    CONFIGS,
    ROOT,
    catalyst_run,
    subprocess_environment,
    tiny_overrides,
    write_yaml,
)

from imgclf.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from imgclf.imaging import open_rgb
from imgclf.model.factory import build_model
from imgclf.model.preprocessing import EvalPreset
from imgclf.model.weights import load_weights
from imgclf.train import reexport
from tests.conftest import make_image_folder

ARCH = "mobilenet_v3_small"
CLASSES = ["circle", "square", "triangle"]


def train(workdir: Path, images: Path, *extra_configs: Path, extra_args=(), **overrides):
    """One real training run whose outputs all land in `workdir`; returns the process result."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_yaml(workdir / "tiny.yaml", tiny_overrides(workdir, images, **overrides))
    return catalyst_run(CONFIGS / "config.yaml", *extra_configs, config, extra_args=extra_args)


def history(workdir: Path) -> list[dict[str, str]]:
    """The run's per-epoch rows without the timing column (which is never reproducible)."""
    with (workdir / "logs" / "history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if not k.endswith("images_per_s")} for row in rows]


def predict(weights, root: Path, paths: list[str]) -> list[int]:
    model, preset = weights.build_model(), EvalPreset(weights.preprocessing)
    batch = torch.stack([preset(open_rgb(root / path)) for path in paths])
    with torch.no_grad():
        return model(batch).argmax(1).tolist()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", per_class=12, size=40)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, images):
    workdir = tmp_path_factory.mktemp("run")
    result = train(workdir, images)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result


def test_run_leaves_weights_picture_logs_and_table(first_run, images):
    workdir, result = first_run
    logdir = workdir / "logs"
    outputs = ("split.json", "history.csv", "checkpoints/best.pth", "checkpoints/last_full.pth")
    for name in (*outputs, "finished.json"):  # finished: a rerun may start over here
        assert (logdir / name).is_file(), name
    assert not list(logdir.rglob("*.tmp"))  # every atomic write completed
    assert (logdir / "logs" / "train.csv").is_file()  # Catalyst's CSV logger
    assert list((logdir / "tensorboard").rglob("events.out.tfevents.*"))  # TensorBoard
    assert "valid macro-F1" in result.stdout and "train images/s" in result.stdout

    weights = load_weights(workdir / "weights" / f"{ARCH}.pth")
    assert (weights.arch, weights.classes) == (ARCH, CLASSES)
    assert (weights.preprocessing.img_size, weights.preprocessing.resize_size) == (32, 37)
    parts = weights.split["parts"]
    assert len(parts["train"]) + len(parts["valid"]) == 36 and parts["test"] == []
    assert sum(weights.class_counts["train"].values()) == len(parts["train"])
    assert weights.config["model"]["arch"] == ARCH and weights.versions["catalyst"] == "21.12"
    assert weights.tta  # export.tta: auto, and the default augmentation flips
    # The exported tensors are those of the epoch the selection rule chose (the weight
    # average's, validated in the live model's place), and the file and table name the rule.
    selected = torch.load(logdir / "checkpoints" / "selected.pth", map_location="cpu")
    for key, tensor in selected["model_state_dict"].items():
        assert torch.equal(weights.state_dict[key], tensor), key
    assert selected["selection"]["rule"] == "smoothed_f1" and selected["selection"]["ema"]
    rule = "mean valid macro-F1 over 5 epochs, EMA weights"
    assert weights.metrics["selection"] == rule and f"exported by     {rule}" in result.stdout
    assert weights.metrics["epoch"] == selected["global_epoch_step"]

    # Catalyst's validation metrics agree with sklearn on the same model and images.
    paths = [path for path, _ in parts["valid"]]
    truth = [CLASSES.index(label) for _, label in parts["valid"]]
    predicted = predict(weights, images, paths)
    expected_f1 = f1_score(truth, predicted, average="macro", zero_division=0)
    assert weights.metrics["f1_macro"] == pytest.approx(expected_f1, abs=1e-4)
    assert weights.metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))

    with Image.open(workdir / "pictures" / "logs.png") as picture:
        picture.load()
        assert picture.format == "PNG" and picture.width > 500 and picture.height > 200


def test_same_seed_from_another_folder_gives_the_same_metrics_and_weights(
    first_run, images, tmp_path
):
    workdir, _ = first_run
    # Run outside the checkout, the configs given by absolute path: the relative paths in the
    # config are relative to the current folder, and no `args.expdir` ties the run to the root.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").symlink_to(images, target_is_directory=True)
    relative = write_yaml(tmp_path / "tiny.yaml", tiny_overrides(Path(), Path("data/images")))
    result = catalyst_run(CONFIGS / "config.yaml", relative, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "logs" / "finished.json").is_file() and (tmp_path / "cache").is_dir()
    assert history(tmp_path) == history(workdir)
    again = load_weights(tmp_path / "weights" / f"{ARCH}.pth")
    first = load_weights(workdir / "weights" / f"{ARCH}.pth")
    assert all(torch.equal(again.state_dict[k], v) for k, v in first.state_dict.items())


def test_ema_mixing_progressive_sizes_and_a_time_budget_in_one_real_run(images, tmp_path):
    # Every optional piece of the recipe at once. The budget (10 minutes) is far more than 3
    # tiny epochs need, so the plan is the configured upper bound whatever the machine's speed
    # (how the plan shrinks on a slow machine: test_train_quality, with a clock set by hand).
    overrides = {
        "data": {
            "mixing": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0},
            "progressive": {"start_scale": 0.5, "full_from": 0.5},
        },
        "stages": {
            "train": {
                "num_epochs": 3,
                "max_minutes": 10,
                "callbacks": {"ema": {"enabled": True}},
            }
        },
    }
    result = train(tmp_path, images, **overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    budget = json.loads((tmp_path / "logs" / "checkpoints" / "budget.json").read_text())
    assert budget["fitted"] == 3 and len(budget["durations"]) == 3
    assert "-> 3 epochs in stage 'train'" in result.stdout
    rows = history(tmp_path)
    assert len(rows) == 3
    # The cosine ends with the stage: the last epoch ends at the schedule's floor (1% of lr).
    assert float(rows[-1]["lr"]) == pytest.approx(0.003 * 0.01, rel=1e-3)
    weights = load_weights(tmp_path / "weights" / f"{ARCH}.pth")
    assert 1 <= weights.metrics["epoch"] <= 3
    # The weight average was validated and exported, and saved for a resume.
    assert weights.metrics["selection"] == "mean valid macro-F1 over 5 epochs, EMA weights"
    selected = torch.load(tmp_path / "logs" / "checkpoints" / "selected.pth", map_location="cpu")
    assert all(
        torch.equal(weights.state_dict[k], v) for k, v in selected["model_state_dict"].items()
    )
    ema = torch.load(tmp_path / "logs" / "checkpoints" / "ema_last.pth", map_location="cpu")
    assert (ema["stage"], ema["stage_epoch"]) == ("train", 3) and ema["updates"] > 0


@pytest.mark.slow
def test_interrupted_run_resumes_the_remaining_epochs_only(images, tmp_path):
    # Pretrained from a local file, so the run has two stages: head (1 epoch), train (2 epochs).
    pretrained = tmp_path / "pretrained.pth"
    torch.save(build_model(ARCH, 5).state_dict(), pretrained)
    setup = {
        "model": {"pretrained": str(pretrained)},
        "stages": {"head": {"num_epochs": 1}, "train": {"num_epochs": 2}},
    }
    straight = train(tmp_path / "straight", images, **setup)
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupt = {"_target_": "train_helpers.InterruptAfterEpoch", "epoch": 2}
    stopped_setup = {**setup, "stages": {**setup["stages"], "train": {"num_epochs": 2}}}
    stopped_setup["stages"]["train"]["callbacks"] = {"interrupt": interrupt}
    stopped = train(tmp_path / "resumed", images, **stopped_setup)
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr[-3000:]
    last = tmp_path / "resumed" / "logs" / "checkpoints" / "last_full.pth"
    assert f"--resume {last}" in stopped.stderr
    assert not (tmp_path / "resumed" / "weights").exists()  # nothing exported from a broken run
    assert [row["epoch"] for row in history(tmp_path / "resumed")] == ["1", "2"]

    # Resume with the uninterrupted config: only the train stage's last epoch runs.
    resumed = train(tmp_path / "resumed", images, extra_args=("--resume", str(last)), **setup)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 'train', epoch 1 of 2 done" in resumed.stdout
    assert "1/1 * Epoch (train)" not in resumed.stderr  # the head stage did not run again
    assert history(tmp_path / "resumed") == history(tmp_path / "straight")
    straight_weights = load_weights(tmp_path / "straight" / "weights" / f"{ARCH}.pth")
    resumed_weights = load_weights(tmp_path / "resumed" / "weights" / f"{ARCH}.pth")
    for key, tensor in straight_weights.state_dict.items():
        assert torch.equal(resumed_weights.state_dict[key], tensor), key


def test_reexport_writes_the_weights_file_again_from_the_logdir(first_run, tmp_path):
    workdir, _ = first_run
    out = tmp_path / "again.pth"
    command = [
        sys.executable,
        "-m",
        "imgclf.train.reexport",
        str(workdir / "logs"),
        "--out",
        str(out),
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=subprocess_environment()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"weights: {out} ({ARCH}, epoch 1, valid macro-F1 ")
    first, again = load_weights(workdir / "weights" / f"{ARCH}.pth"), load_weights(out)
    assert (again.arch, again.classes, again.split) == (first.arch, first.classes, first.split)
    assert again.metrics == first.metrics and again.preprocessing == first.preprocessing
    assert all(torch.equal(again.state_dict[k], v) for k, v in first.state_dict.items())


def test_reexport_of_a_hand_picked_checkpoint_says_so(first_run, tmp_path):
    workdir, _ = first_run
    best = workdir / "logs" / "checkpoints" / "best.pth"  # Catalyst's: no selection record
    weights, _ = reexport.reexport(best, tmp_path / "best.pth")
    assert weights.metrics["selection"] == "chosen by hand: best.pth"
    assert load_weights(tmp_path / "best.pth").metrics == weights.metrics


def test_reexport_of_a_damaged_checkpoint_is_one_sentence(first_run, tmp_path, capsys):
    workdir, _ = first_run
    logdir = tmp_path / "logs"
    (logdir / "checkpoints").mkdir(parents=True)
    (logdir / "configs").mkdir()
    for name in ("split.json", "configs/_config.json"):
        (logdir / name).write_bytes((workdir / "logs" / name).read_bytes())
    damaged = logdir / "checkpoints" / "train.1.pth"
    whole = (workdir / "logs" / "checkpoints" / "best.pth").read_bytes()
    damaged.write_bytes(whole[: len(whole) // 3])
    assert reexport.main([str(damaged), "--out", str(tmp_path / "w.pth")]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith(
        f"python -m imgclf.train.reexport: error: Checkpoint {damaged} can't be read ("
    )
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "w.pth").exists()
    with pytest.raises(SystemExit) as exit_info:
        reexport.main(["--help"])
    assert (
        exit_info.value.code == 0 and "python -m imgclf.train.reexport" in capsys.readouterr().out
    )


def test_sigterm_before_the_first_checkpoint_exits_130_with_a_hint(images, tmp_path):
    sigterm = {"_target_": "train_helpers.SignalAtBatch", "epoch": 1, "batch": 2}
    stopped = train(tmp_path, images, stages={"train": {"callbacks": {"sigterm": sigterm}}})
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        "interrupted; no epoch had finished, so no checkpoint was kept; "
        "rerun the same command to start over"
    )
    assert not (tmp_path / "logs" / "checkpoints" / "last_full.pth").exists()


@pytest.mark.slow
def test_sigterm_mid_epoch_keeps_the_checkpoint_and_a_rerun_must_choose(images, tmp_path):
    # train_helpers.SignalAtBatch sends the real SIGTERM to the training process, mid-epoch.
    sigterm = {"_target_": "train_helpers.SignalAtBatch", "epoch": 2, "batch": 2}
    stopped = train(
        tmp_path, images, epochs=2, stages={"train": {"callbacks": {"sigterm": sigterm}}}
    )
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr[-3000:]
    last = tmp_path / "logs" / "checkpoints" / "last_full.pth"
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"interrupted; continue with the same command plus --resume {last} (or --autoresume last)"
    )
    assert "Traceback" not in stopped.stderr
    assert torch.load(last, map_location="cpu")["stage_epoch_step"] == 1  # epoch 1's, intact
    assert not (tmp_path / "weights").exists()
    kept = last.read_bytes()

    # The same command again neither starts over nor touches the checkpoint ...
    again = train(tmp_path, images, epochs=2)
    assert again.returncode == EXIT_BAD_INPUT, again.stderr[-3000:]
    assert f"holds an unfinished run (checkpoint {last}); continue it" in again.stderr
    assert last.read_bytes() == kept

    # ... and with --autoresume last it runs the second epoch only.
    resumed = train(tmp_path, images, epochs=2, extra_args=("--autoresume", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 'train', epoch 1 of 2 done" in resumed.stdout
    assert [row["epoch"] for row in history(tmp_path)] == ["1", "2"]
    assert (tmp_path / "weights" / f"{ARCH}.pth").is_file()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_head_and_train_stages(images, tmp_path):
    # Two stages: each runs in freshly spawned workers, the second starting from the first's.
    pretrained = tmp_path / "pretrained.pth"
    torch.save(build_model(ARCH, 5).state_dict(), pretrained)
    result = train(
        tmp_path,
        images,
        CONFIGS / "ddp.yaml",
        engine={"port": _free_port(), "num_node_workers": 2, "backend": "gloo"},
        model={"pretrained": str(pretrained)},
        stages={"head": {"num_epochs": 1}, "train": {"num_epochs": 1}},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [row["stage"] for row in history(tmp_path)] == ["head", "train"]
    weights = load_weights(tmp_path / "weights" / f"{ARCH}.pth")
    assert weights.classes == CLASSES
    predicted = predict(weights, images, [path for path, _ in weights.split["parts"]["valid"]])
    assert len(predicted) == len(weights.split["parts"]["valid"])
