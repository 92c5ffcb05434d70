"""Every config builds its components; every bad config stops with one sentence and exit 2."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import pytest
import torch
from catalyst.callbacks import CheckpointCallback
from torch import nn
from train_helpers import CONFIGS, catalyst_run, merged_config, tiny_overrides, write_yaml

from imgclf.errors import EXIT_BAD_INPUT
from imgclf.model.factory import build_model, head
from imgclf.train.callbacks import HistoryCallback, ThroughputCallback
from imgclf.train.catalyst_compat import callback_isinstance
from imgclf.train.engines import AutoDistributedEngine
from imgclf.train.runner import ImageClassifierRunner
from imgclf.train.schedules import WarmupCosineLR
from imgclf.train.settings import ExportSettings

OVERRIDE_FILES = sorted(path for path in CONFIGS.glob("*.yaml") if path.name != "config.yaml")


def make_runner(config: dict) -> ImageClassifierRunner:
    return ImageClassifierRunner(config=config)


def build_stage(runner: ImageClassifierRunner, stage: str) -> dict:
    """What Catalyst builds at a stage start, in its order."""
    runner.stage_key = stage
    runner.stage_epoch_len = runner.get_stage_len(stage)
    runner.loaders = runner.get_loaders(stage)
    model = runner.get_model(stage)
    optimizer = runner.get_optimizer(model=model, stage=stage)
    return {
        "model": model,
        "criterion": runner.get_criterion(stage),
        "optimizer": optimizer,
        "scheduler": runner.get_scheduler(optimizer=optimizer, stage=stage),
        "callbacks": runner.get_callbacks(stage),
        "engine": runner.get_engine(),
    }


@pytest.mark.parametrize("override", [None, *OVERRIDE_FILES], ids=lambda p: p and p.name)
def test_every_config_builds_its_components(override, tiny_image_folder, tmp_path):
    files = [CONFIGS / "config.yaml"] + ([override] if override else [])
    config = merged_config(*files, overrides=tiny_overrides(tmp_path, tiny_image_folder))
    runner = make_runner(config)
    assert runner.stages == ["train"]  # the head-only stage runs only with pretrained weights
    built = build_stage(runner, "train")
    assert isinstance(built["model"], nn.Module)
    assert head(built["model"], runner.model_settings.arch).out_features == 3
    assert isinstance(built["optimizer"], torch.optim.AdamW)
    assert isinstance(built["criterion"], nn.CrossEntropyLoss)
    assert built["scheduler"] is not None
    callbacks = built["callbacks"].values()
    for kind in (CheckpointCallback, ThroughputCallback, HistoryCallback):
        assert any(callback_isinstance(callback, kind) for callback in callbacks), kind
    # Without workers: uint8 batches at the cache's side; the presets run on them in
    # handle_batch, on the training device.
    batch, targets = next(iter(runner.loaders["train"]))
    assert batch.dtype == torch.uint8 and batch.shape[1:] == (3, 37, 37)
    assert targets.dtype == torch.int64
    for loader, transform in runner._batch_transforms.items():
        assert transform(batch).shape[1:] == (3, 32, 32), loader
    if override and override.name == "ddp.yaml":
        engine = built["engine"]
        assert isinstance(engine, AutoDistributedEngine)
        assert engine.process_group_kwargs["backend"] == (
            "nccl" if torch.cuda.is_available() else "gloo"
        )


def test_with_workers_the_presets_run_in_the_workers(tiny_image_folder, tmp_path):
    overrides = tiny_overrides(tmp_path, tiny_image_folder, data={"num_workers": 1})
    runner = make_runner(merged_config(CONFIGS / "config.yaml", overrides=overrides))
    loaders = runner.get_loaders("train")
    assert runner._batch_transforms == {}  # nothing left for handle_batch
    for loader in loaders.values():
        batch, _ = next(iter(loader))
        assert batch.dtype == torch.float32 and batch.shape[1:] == (3, 32, 32)


def test_resnet18_override_changes_only_the_architecture(tiny_image_folder, tmp_path):
    overrides = tiny_overrides(tmp_path, tiny_image_folder)
    base = merged_config(CONFIGS / "config.yaml", overrides=overrides)
    resnet = merged_config(CONFIGS / "config.yaml", CONFIGS / "resnet18.yaml", overrides=overrides)
    assert resnet["model"]["arch"] == "resnet18"
    resnet["model"]["arch"] = base["model"]["arch"]
    assert resnet == base


def test_pretrained_local_file_adds_the_head_stage_with_a_frozen_backbone(
    tiny_image_folder, tmp_path
):
    source = build_model("resnet18", 5)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    overrides = tiny_overrides(
        tmp_path,
        tiny_image_folder,
        model={"arch": "resnet18", "pretrained": str(tmp_path / "resnet18.pth")},
    )
    runner = make_runner(merged_config(CONFIGS / "config.yaml", overrides=overrides))
    assert runner.stages == ["head", "train"]
    # The backbone came from the file (the head did not fit 3 classes and starts fresh).
    assert torch.equal(runner.model.conv1.weight, source.conv1.weight)
    head_model = build_stage(runner, "head")["model"]
    trainable = {name for name, p in head_model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    train_model = build_stage(runner, "train")["model"]
    assert all(p.requires_grad for p in train_model.parameters())


def test_class_weights_follow_the_training_counts(tmp_path):
    from tests.conftest import make_image_folder

    images = make_image_folder(tmp_path / "images", per_class=12)
    for extra in sorted((images / "circle").iterdir())[:6]:  # circle: 6 images, others 12
        extra.unlink()
    criterion = {"_target_": "torch.nn.CrossEntropyLoss", "class_weights": True}
    overrides = tiny_overrides(tmp_path, images, stages={"train": {"criterion": criterion}})
    runner = make_runner(merged_config(CONFIGS / "config.yaml", overrides=overrides))
    counts = runner.data.class_counts["train"]
    weight = build_stage(runner, "train")["criterion"].weight
    total = sum(counts.values())
    expected = [total / (3 * counts[label]) for label in runner.data.classes]
    assert weight.tolist() == pytest.approx(expected)
    assert weight[0] > weight[1]  # the rarer class weighs more


def test_one_cycle_schedule_and_balanced_sampler_are_one_key_away(tiny_image_folder, tmp_path):
    one_cycle = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 0.01}
    overrides = tiny_overrides(
        tmp_path,
        tiny_image_folder,
        epochs=3,
        data={"balanced": True},
        stages={"train": {"scheduler": one_cycle}},
    )
    runner = make_runner(merged_config(CONFIGS / "config.yaml", overrides=overrides))
    built = build_stage(runner, "train")
    assert isinstance(built["scheduler"], torch.optim.lr_scheduler.OneCycleLR)
    # The runner filled in the stage length: 3 epochs of the train loader's batches.
    assert built["scheduler"].total_steps == 3 * len(runner.loaders["train"])
    assert isinstance(runner.loaders["train"].sampler, torch.utils.data.WeightedRandomSampler)


def test_warmup_cosine_schedule_by_hand():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = WarmupCosineLR(
        optimizer, epochs=3, steps_per_epoch=10, warmup_epochs=1, warmup_start=0.0, min_ratio=0.0
    )
    factors = [schedule.factor(step) for step in range(31)]
    assert factors[0] == 0.0 and factors[5] == pytest.approx(0.5) and factors[10] == 1.0
    # Cosine over the remaining 20 steps: halfway (step 20) is 0.5, the end is 0.
    assert factors[20] == pytest.approx(0.5) and factors[30] == pytest.approx(0.0, abs=1e-12)
    assert factors[15] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    state = schedule.state_dict()
    assert state["lr_lambdas"] == [None]  # nothing unpicklable in checkpoints


@pytest.mark.parametrize(
    ("data", "export", "expected"),
    [
        ({}, {}, True),  # auto, and the default augmentation flips half the images
        ({"augment": {"hflip_prob": 0.0}}, {}, False),
        ({"augment": {"hflip_prob": 0.0}}, {"tta": True}, True),
        ({}, {"tta": False}, False),
    ],
)
def test_export_tta_follows_the_training_flips_unless_set(data, export, expected):
    assert ExportSettings.from_config({"data": data, "export": export}, "resnet18").tta is expected


BAD_CONFIGS = {
    "unknown architecture": ({"model": {"arch": "vgg11"}}, "Unknown architecture 'vgg11'"),
    "missing data folder": ({"data": {"root": "{tmp}/nowhere"}}, "does not exist"),
    "empty data folder": ({"data": {"root": "{tmp}/empty"}}, "has no class folders"),
    "class without images": ({"data": {"root": "{tmp}/hollow"}}, "has no images"),
    "one class": ({"data": {"root": "{tmp}/single"}}, "at least two classes"),
    "no validation images": ({"data": {"root": "{tmp}/lonely"}}, "too few images for a valid"),
    "bad image size": ({"data": {"img_size": -3}}, "data.img_size is -3"),
    "bad batch size": ({"data": {"batch_size": "big"}}, "data.batch_size is 'big'"),
    "bad worker count": ({"data": {"num_workers": "many"}}, "must be auto or an integer"),
    "no train stage": ({}, "has no stage 'train'"),
    "zero epochs": ({"stages": {"train": {"num_epochs": 0}}}, "stages.train.num_epochs is 0"),
    "missing pretrained file": ({"model": {"pretrained": "{tmp}/none.pth"}}, "neither"),
    "missing resume checkpoint": ({"args": {"resume": "{tmp}/last_full.pth"}}, "does not exist"),
    "scheduler argument typo": (
        {"stages": {"train": {"scheduler": {"warmup_epoch": 1}}}},
        "stages.train.scheduler in the config could not be built (TypeError: ",
    ),
    "unknown callback class": (
        {"stages": {"train": {"callbacks": {"progress": {"_target_": "catalyst.Nope"}}}}},
        "stages.train.callbacks in the config could not be built",
    ),
    # Typos and wrong types, refused with the nearest valid name (issue 16, item 11).
    "data key typo": (
        {"data": {"img_sise": 128}},
        "Unknown config key data.img_sise in the config; did you mean data.img_size?",
    ),
    "top-level block typo": (
        {"modle": {"arch": "resnet18"}},
        "Unknown config key modle in the config; did you mean model?",
    ),
    "stage key typo": (
        {"stages": {"train": {"num_epoch": 3}}},
        "Unknown config key stages.train.num_epoch in the config; "
        "did you mean stages.train.num_epochs?",
    ),
    "augment key typo": (
        {"data": {"augment": {"hflip": 0.5}}},
        "Unknown config key data.augment.hflip in the config; did you mean "
        "data.augment.hflip_prob?",
    ),
    "args key typo": (
        {"args": {"logdri": "x"}},
        "Unknown config key args.logdri in the config; did you mean args.logdir?",
    ),
    "key with no near name": (
        {"export": {"zzz": 1}},
        "Unknown config key export.zzz in the config; valid keys of export: weights, picture, "
        "tta.",
    ),
    "flip probability not a number": (
        {"data": {"augment": {"hflip_prob": "half"}}},
        "data.augment.hflip_prob is 'half'; it must be a number between 0.0 and 1.0.",
    ),
    "export tta not a choice": (
        {"export": {"tta": "yes"}},
        "export.tta is 'yes'; use auto, true or false.",
    ),
    "seed not an integer": ({"args": {"seed": "abc"}}, "args.seed is 'abc' in the config; it"),
    "flag not true or false": (
        {"data": {"balanced": "ture"}},
        "data.balanced is 'ture'; it must be true or false.",
    ),
    # Problems knowable at the start, reported before any work (item 13).
    "data root is a file": (
        {"data": {"root": "{tmp}/a_file"}},
        "Data folder {tmp}/a_file is a file, not a folder",
    ),
    "weights folder is a file": (
        {"export": {"weights": "{tmp}/a_file/{arch}.pth"}},
        "The weights folder {tmp}/a_file can't be created: {tmp}/a_file is a file",
    ),
    "picture folder is a file": (
        {"export": {"picture": "{tmp}/a_file/pictures/logs.png"}},
        "The picture folder {tmp}/a_file/pictures can't be created",
    ),
    "cache folder is a file": (
        {"data": {"cache_dir": "{tmp}/a_file"}},
        "The cache folder {tmp}/a_file can't be created",
    ),
    "log folder is a file": ({"args": {"logdir": "{tmp}/a_file"}}, "The log folder {tmp}/a_file"),
    "corrupt resume checkpoint": (
        {"args": {"resume": "{tmp}/corrupt_full.pth"}},
        "Checkpoint {tmp}/corrupt_full.pth can't be read (",
    ),
    "resume checkpoint is a folder": (
        {"args": {"resume": "{tmp}/empty"}},
        "Checkpoint {tmp}/empty is a folder, not a file",
    ),
}


def _bad_roots(tmp_path: Path, tiny_image_folder: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "hollow" / "b").mkdir()
    for label in ("circle", "square"):  # one image per class: nothing left to validate on
        (tmp_path / "lonely" / label).mkdir(parents=True)
        (tmp_path / "lonely" / label / "1.jpg").write_bytes(
            next((tiny_image_folder / label).iterdir()).read_bytes()
        )
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "circle").symlink_to(tiny_image_folder / "circle")
    (tmp_path / "a_file").write_text("not a folder\n")
    # A full checkpoint cut short, as a crash during a plain (non-atomic) copy leaves it.
    buffer = io.BytesIO()
    torch.save({"model_state_dict": build_model("resnet18", 3).state_dict()}, buffer)
    (tmp_path / "corrupt_full.pth").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _fill(value, tmp_path):
    if isinstance(value, dict):
        return {k: _fill(v, tmp_path) for k, v in value.items()}
    return value.replace("{tmp}", str(tmp_path)) if isinstance(value, str) else value


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_sentence_and_exit_2(case, tiny_image_folder, tmp_path, capsys):
    _bad_roots(tmp_path, tiny_image_folder)
    change, message = BAD_CONFIGS[case]
    overrides = tiny_overrides(tmp_path, tiny_image_folder, **_fill(change, tmp_path))
    config = merged_config(CONFIGS / "config.yaml", overrides=overrides)
    if case == "no train stage":
        config["stages"]["warmup"] = config["stages"].pop("train")
    with pytest.raises(SystemExit) as exit_info:
        make_runner(config)
    assert exit_info.value.code == EXIT_BAD_INPUT
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]  # progress bars may come first
    assert error.startswith("catalyst-dl run: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in error
    assert "Traceback" not in stderr


def test_catalyst_dl_run_exits_2_without_traceback(tmp_path):
    override = write_yaml(
        tmp_path / "bad.yaml",
        {"data": {"root": str(tmp_path / "missing")}, "args": {"logdir": str(tmp_path / "l")}},
    )
    result = catalyst_run(CONFIGS / "config.yaml", override)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"Data folder {tmp_path / 'missing'} does not exist" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_weights_folder_is_refused_before_any_work(tiny_image_folder, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    overrides = tiny_overrides(
        tmp_path, tiny_image_folder, export={"weights": str(locked / "{arch}.pth")}
    )
    with pytest.raises(SystemExit) as exit_info:
        make_runner(merged_config(CONFIGS / "config.yaml", overrides=overrides))
    assert exit_info.value.code == EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"The weights folder {locked} is not writable (Permission denied" in error
    assert not (tmp_path / "cache").exists()  # refused before the images were cached
