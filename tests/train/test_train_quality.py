"""The recipe pieces of issue 14, each against numbers computed by hand: weight average,
exported-epoch rule, mixup / CutMix, progressive sizes, the budget's schedule fit."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from imgclf.errors import InputError
from imgclf.train import budget as budget_module
from imgclf.train.budget import TimeBudgetCallback
from imgclf.train.ema import WeightAverage
from imgclf.train.mixing import BatchMixer, MixSettings
from imgclf.train.progressive import ProgressiveResize
from imgclf.train.schedules import WarmupCosineLR
from imgclf.train.selection import describe, rule_score


def test_weight_average_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    # half-life 1 epoch of 1 step: decay 0.5; warm-up caps it at (1 + n) / (10 + n).
    average = WeightAverage(model, half_life_epochs=1.0, steps_per_epoch=1)
    assert average.decay == pytest.approx(0.5)
    with torch.no_grad():
        model.weight.fill_(10.0)
    average.update(model)  # decay min(0.5, 2 / 11) = 2/11: 0 -> 10 * 9/11
    assert average.module.weight.item() == pytest.approx(10 * 9 / 11)
    for _ in range(20):
        average.update(model)
    assert average.module.weight.item() == pytest.approx(10.0, abs=1e-4)
    assert model.weight.requires_grad and not average.module.weight.requires_grad
    # decay for 100 steps per epoch, half-life 2 epochs: 0.5 ** (1 / 200)
    other = WeightAverage(model, half_life_epochs=2.0, steps_per_epoch=100)
    assert other.decay**200 == pytest.approx(0.5)


def test_selection_rules_by_hand():
    f1 = [0.5, 1.0, 0.9, 0.9, 0.9, 0.9]
    losses = [1.0, 0.4, 0.5, 0.45, 0.3, 0.35]
    assert rule_score("f1", f1[:2], losses[:2], 5) == 1.0  # the spike wins
    assert rule_score("smoothed_f1", f1[:2], losses[:2], 5) == pytest.approx(0.75)
    assert rule_score("smoothed_f1", f1, losses, 5) == pytest.approx(0.92)  # the last 5
    assert rule_score("smoothed_f1", f1[:3], losses[:3], 2) == pytest.approx(0.95)
    assert rule_score("loss", f1[:5], losses[:5], 5) == -0.3
    assert describe({"rule": "smoothed_f1", "window": 5, "ema": True}) == (
        "mean valid macro-F1 over 5 epochs, EMA weights"
    )
    assert describe({"rule": "f1", "ema": False}) == "best valid macro-F1"


def test_mixup_mixes_images_and_targets_with_one_weight(monkeypatch):
    images = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    targets = torch.tensor([0, 1, 2, 0])
    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self: torch.tensor(0.75))
    mixer = BatchMixer(MixSettings(mixup_alpha=0.4), num_classes=3)
    mixed, soft = mixer(images, targets)
    # image i is mixed with image 3 - i: 0.75 * i + 0.25 * (3 - i)
    assert mixed[:, 0, 0, 0].tolist() == pytest.approx([0.75, 1.25, 1.75, 2.25])
    expected = [[1.0, 0, 0], [0, 0.75, 0.25], [0, 0.25, 0.75], [1.0, 0, 0]]
    assert torch.allclose(soft, torch.tensor(expected))
    assert soft.sum(dim=1).tolist() == pytest.approx([1.0] * 4)


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area(monkeypatch):
    images = torch.zeros(2, 1, 10, 10)
    images[1] = 1.0
    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self: torch.tensor(0.84))
    mixer = BatchMixer(MixSettings(cutmix_alpha=1.0), num_classes=2)
    mixed, soft = mixer(images, torch.tensor([0, 1]))
    pasted = float(mixed[0].sum())  # the box of image 1 in image 0, clipped at the borders
    assert 0 < pasted <= 16  # cut side 0.4 * 10 = 4: at most a 4x4 box
    assert soft[0].tolist() == pytest.approx([1 - pasted / 100, pasted / 100])
    assert soft[1].tolist() == pytest.approx([pasted / 100, 1 - pasted / 100])


def test_no_mixing_gives_one_hot_targets_and_settings_are_checked():
    mixer = BatchMixer(MixSettings(), num_classes=3)
    assert not mixer.settings.enabled
    images = torch.ones(2, 1, 2, 2)
    _, soft = mixer(images, torch.tensor([2, 0]))
    assert soft.tolist() == [[0, 0, 1.0], [1.0, 0, 0]]
    with pytest.raises(InputError, match=r"data\.mixing\.prob is 2"):
        MixSettings.from_config({"data": {"mixing": {"prob": 2}}})
    with pytest.raises(InputError, match="unknown key 'alpha'"):
        MixSettings.from_config({"data": {"mixing": {"alpha": 1}}})
    assert MixSettings.from_config({"data": {"mixing": {"mixup_alpha": 0.2}}}).enabled


def test_progressive_sizes_by_hand():
    resize = ProgressiveResize(start_scale=0.5, full_from=0.5)
    sizes = [resize.size(64, epoch, 10) for epoch in range(1, 11)]
    # 32 at epoch 1, linear to 64 at epoch 6 (= 0.5 * 10 epochs later), multiples of 8
    assert sizes == [32, 40, 48, 48, 56, 64, 64, 64, 64, 64]
    assert not ProgressiveResize().enabled
    batch = torch.rand(2, 3, 64, 64)
    assert resize.resize(batch, 32).shape == (2, 3, 32, 32)
    with pytest.raises(InputError, match="start_scale is 0"):
        ProgressiveResize.from_config({"data": {"progressive": {"start_scale": 0}}})


def test_schedule_fitted_to_fewer_epochs_ends_there():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupCosineLR(optimizer, epochs=100, steps_per_epoch=10, warmup_epochs=3)
    schedule.fit_to_epochs(20)
    assert (schedule.total_steps, schedule.warmup_steps) == (200, 30)
    assert schedule.factor(200) == pytest.approx(0.01)
    assert schedule.factor(115) == pytest.approx(0.01 + 0.99 * 0.5)  # half way down the cosine
    state = schedule.state_dict()
    fresh = WarmupCosineLR(optimizer, epochs=100, steps_per_epoch=10)
    fresh.load_state_dict(state)
    assert fresh.total_steps == 200  # a resumed run keeps the fitted length


class Clock:
    """A stand-in for time.perf_counter that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_runner(tmp_path, num_epochs: int):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    return SimpleNamespace(
        run_dir=tmp_path,
        stage_key="train",
        stage_epoch_step=0,
        stage_epoch_len=num_epochs,
        get_stage_len=lambda stage: num_epochs,
        scheduler=WarmupCosineLR(optimizer, epochs=num_epochs, steps_per_epoch=10),
        engine=SimpleNamespace(is_master_process=True),
    )


def run_epochs(callback, runner, clock, seconds: list[float]) -> None:
    for duration in seconds:
        if runner.stage_epoch_step >= runner.stage_epoch_len:
            break
        runner.stage_epoch_step += 1
        callback.on_epoch_start(runner)
        clock.now += duration
        callback.on_epoch_end(runner)


def test_budget_fits_epochs_and_schedule_after_two_epochs(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    runner = fake_runner(tmp_path, num_epochs=100)
    callback = TimeBudgetCallback(max_minutes=1.0)  # 60 s
    callback.on_stage_start(runner)
    run_epochs(callback, runner, clock, [8.0, 4.0])
    # 12 s spent, 48 s left at 4 s per epoch: 2 + 12 epochs; the cosine ends at epoch 14.
    assert runner.stage_epoch_len == 14
    assert runner.scheduler.total_steps == 140
    # The machine slows down to 6 s per epoch. After epoch 3: 42 s left, median(4, 6) = 5 s:
    # 3 + 8 = 11 epochs; after epoch 4: 36 s left, median(4, 6, 6) = 6 s: 4 + 6 = 10.
    run_epochs(callback, runner, clock, [6.0, 6.0])
    assert runner.stage_epoch_len == 10
    assert runner.scheduler.total_steps == 100
    # Faster epochs again never lengthen the plan (no schedule jumps back up).
    run_epochs(callback, runner, clock, [1.0])
    assert runner.stage_epoch_len == 10


def test_budget_never_exceeds_num_epochs_and_stops_when_spent(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    runner = fake_runner(tmp_path, num_epochs=5)
    callback = TimeBudgetCallback(max_minutes=10.0)
    callback.on_stage_start(runner)
    run_epochs(callback, runner, clock, [1.0] * 10)
    assert runner.stage_epoch_step == 5 and runner.stage_epoch_len == 5
    runner = fake_runner(tmp_path, num_epochs=100)
    callback = TimeBudgetCallback(max_minutes=0.1)  # 6 s
    callback.on_stage_start(runner)
    run_epochs(callback, runner, clock, [7.0] * 10)
    assert runner.stage_epoch_step == 1  # over budget after the first epoch: stop
    saved = json.loads((tmp_path / "checkpoints" / "budget.json").read_text())
    assert saved["durations"] == [7.0]
