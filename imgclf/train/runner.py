"""The Catalyst runner behind `catalyst-dl run --config configs/config.yaml`.

Catalyst's `SupervisedConfigRunner` builds the stage components from their `_target_` nodes;
this runner adds what it can't know:
- data: `prepare_data` + `build_loaders` from the `data:` block (classes, split, cache);
- model: `build_model` from `model:` with the class count, BatchNorm momentum, channels-last,
  the backbone frozen in stages that say `freeze_backbone: true` (run only when pretrained);
- criterion class weights, and the scheduler's `epochs` / `steps_per_epoch`;
- resume that continues the remaining epochs (`imgclf.train.resume`), and no silent start over
  in the logdir of an interrupted run;
- checks before epoch 1: every config key known (`config_keys`), every output folder writable
  (`preflight`);
- the export at the end: weights file, picture, table;
- bad input: one sentence on stderr and exit code 2 instead of a traceback; Ctrl-C or SIGTERM:
  the last checkpoint kept, the resume command printed, exit code 130.

Catalyst's private API is reached only through `imgclf.train.catalyst_compat`.
"""

from __future__ import annotations

import inspect
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from typing import Any

import torch
from catalyst.registry import REGISTRY
from catalyst.utils.misc import get_by_keys

from imgclf.dataset import build_loaders, prepare_data
from imgclf.dataset.loaders import place_transforms, training_workers
from imgclf.dataset.presets import TrainPreset
from imgclf.errors import EXIT_INTERRUPTED, InputError, report_input_error
from imgclf.fileio import atomic_write_json
from imgclf.model.factory import build_model, freeze_backbone, set_batchnorm_momentum
from imgclf.model.preprocessing import EvalPreset, Preprocessing
from imgclf.train import resume
from imgclf.train.budget import TimeBudgetCallback
from imgclf.train.callbacks import HistoryCallback, ThroughputCallback
from imgclf.train.catalyst_compat import ConfigRunnerBase, callback_isinstance
from imgclf.train.config_keys import (
    check_config_keys,
    command_line_configs,
    seed_given_on_command_line,
)
from imgclf.train.export import SPLIT_FILE, plot_history, summary_table, write_weights_file
from imgclf.train.mixing import LOSS_TARGETS, BatchMixer, MixSettings
from imgclf.train.preflight import check_output_folders
from imgclf.train.progressive import ProgressiveResize
from imgclf.train.settings import (
    DataSettings,
    ExportSettings,
    ModelSettings,
    check_stages,
    logdir_of,
)


def exit_for_input_error(error: InputError) -> None:
    """Print the one-sentence error and leave with exit code 2 (no traceback)."""
    raise SystemExit(report_input_error(error, "catalyst-dl run"))


@contextmanager
def config_errors(where: str) -> Iterator[None]:
    """Turn a failure to build the config node `where` into an InputError naming it."""
    try:
        yield
    except InputError:
        raise
    except Exception as error:
        # hydra-slayer wraps the real reason (e.g. an unexpected keyword) in a RuntimeError.
        cause = error.__cause__ or error
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
        raise InputError(
            f"{where} in the config could not be built ({type(cause).__name__}: {reason}); "
            "fix that node's _target_ or arguments."
        ) from error


def with_file_seed(config: dict[str, Any], files: list[tuple[Any, dict]]) -> dict[str, Any]:
    """`config` with the config files' `args.seed`: catalyst-dl run puts its `--seed` default
    (42) in its place unless `--seed` was given."""
    blocks = [content.get("args") or {} for _, content in files]
    seeds = [block["seed"] for block in blocks if "seed" in block]
    if not seeds or seed_given_on_command_line():
        return config
    return {**config, "args": {**config.get("args", {}), "seed": seeds[-1]}}


def raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: stop the way Ctrl-C does (last checkpoint kept, resume hint)."""
    raise KeyboardInterrupt


class ImageClassifierRunner(ConfigRunnerBase):
    """SupervisedConfigRunner for image folders; see the module docstring."""

    def __init__(self, config: dict[str, Any], **kwargs: Any) -> None:
        try:
            config = with_file_seed(config, command_line_configs())
            check_config_keys(config)
            check_stages(config)
            super().__init__(config=config, **kwargs)
            self.data_settings = DataSettings.from_config(self.config)
            self.model_settings = ModelSettings.from_config(self.config)
            self.export_settings = ExportSettings.from_config(
                self.config, self.model_settings.arch
            )
            self.run_dir = logdir_of(self.config)
            self._resume_point = resume.read_resume_point(
                self.resume_path, self.run_dir, self.stage_configs
            )
            if self._resume_point is None:
                resume.check_fresh_start(self.run_dir)
            check_output_folders(
                logdir=self.run_dir,
                weights=self.export_settings.weights,
                picture=self.export_settings.picture,
                cache_dir=self.data_settings.cache_dir,
            )
            self.mix_settings = MixSettings.from_config(self.config)
            self.progressive = ProgressiveResize.from_config(self.config)
            self._data = self._prepare_data(progress=True)
            if not self._data.parts["valid"]:
                raise InputError(
                    f"{self.data_settings.root} has too few images for a validation part "
                    f"(data.val_fraction {self.data_settings.val_fraction}); add images, at "
                    "least two per class."
                )
            self._write_run_info()
            self._mixer = (
                BatchMixer(self.mix_settings, len(self._data.classes))
                if self.mix_settings.enabled
                else None
            )
            # Built here, in the parent process, so a bad arch or pretrained file stops the run
            # before any work, and every distributed worker starts from the same weights.
            self.model = self._build_model()
            self._check_components()
            if self._resume_point is None:
                resume.mark_started(self.run_dir)  # its checkpoints will be this run's
        except InputError as error:
            exit_for_input_error(error)
        # Resume is handled here (see on_stage_start), not by Catalyst's CheckpointCallback.
        self.take_over_resume()
        self._started = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Distributed workers get a pickled runner: they re-open the cache instead of receiving
        # the prepared data (the cache is already built, so that is quick).
        state = self.__dict__.copy()
        state["_data"] = None
        return state

    # ----------------------------------------------------------------------------- setup

    def _prepare_data(self, progress: bool):
        settings = self.data_settings
        return prepare_data(
            settings.root,
            img_size=settings.img_size,
            val_fraction=settings.val_fraction,
            seed=self.seed,
            cache_dir=settings.cache_dir,
            progress=progress,
            classes=settings.classes,
            exclude_classes=settings.exclude_classes,
        )

    @property
    def data(self):
        """The prepared data (prepared again in distributed workers)."""
        if self._data is None:
            self._data = self._prepare_data(progress=False)
        return self._data

    def _write_run_info(self) -> None:
        """`<logdir>/split.json`: what the export needs from the data, written next to the run."""
        atomic_write_json(
            self.run_dir / SPLIT_FILE,
            {
                "classes": self._data.classes,
                "img_size": self.data_settings.img_size,
                "class_counts": self._data.class_counts,
                "split": self._data.split,
            },
        )

    def _build_model(self) -> torch.nn.Module:
        settings = self.model_settings
        model = build_model(settings.arch, len(self._data.classes), settings.pretrained)
        if settings.bn_momentum is not None:
            set_batchnorm_momentum(model, settings.bn_momentum)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _check_components(self) -> None:
        """Build every stage's components once, so that a mistake in a `_target_` node (a typo,
        a wrong argument) stops the run here with one sentence, not at a stage start with a
        traceback."""
        for stage in self.stages:
            self.stage_key, self.stage_epoch_len = stage, self.get_stage_len(stage)
            self.loaders = self.get_loaders(stage)
            model = self.get_model(stage)
            with config_errors(f"stages.{stage}.criterion"):
                self.get_criterion(stage)
            with config_errors(f"stages.{stage}.optimizer"):
                optimizer = self.get_optimizer(model=model, stage=stage)
            with config_errors(f"stages.{stage}.scheduler"):
                self.get_scheduler(optimizer=optimizer, stage=stage)
            with config_errors(f"stages.{stage}.callbacks"):
                self.get_callbacks(stage)
        with config_errors("engine"):
            self.get_engine()
        self.stage_key, self.loaders = None, None

    # ------------------------------------------------------------------ Catalyst's get_*

    @property
    def stages(self) -> list[str]:
        """Config stages, minus head-only ones when not pretrained, from the resumed one on."""
        pretrained = self.model_settings.pretrained is not None
        names = [
            name
            for name, stage in self.stage_configs.items()
            if pretrained or not stage.get("freeze_backbone", False)
        ]
        if self._resume_point is not None:
            names = names[names.index(self._resume_point.stage) :]
        return names

    def get_loaders(self, stage: str):
        """Train / valid loaders over the cache, with the presets from `data:`.

        The presets run on whole batches where the batches are made: in the DataLoader
        workers when there are any (the default with a GPU), else in this process on the
        training device (`handle_batch`; the default without a GPU, where workers would only
        compete with the model for the cores). On an H200 with 8 workers, augmenting in the
        workers trained the demo at 1,787 images/s, on the GPU at 1,369 (README, Benchmarks).
        """
        settings = self.data_settings
        workers = training_workers() if settings.num_workers is None else settings.num_workers
        in_loaders, self._batch_transforms = place_transforms(
            workers,
            {
                "train": TrainPreset(img_size=settings.img_size, **settings.augment),
                "valid": EvalPreset(Preprocessing.for_img_size(settings.img_size)),
            },
        )
        return build_loaders(
            self.data,
            batch_size=settings.batch_size,
            num_workers=workers,
            train_transform=in_loaders.get("train"),
            eval_transform=in_loaders.get("valid"),
            balanced=settings.balanced,
            seed=self.seed,
            min_epoch_images=settings.min_epoch_images,
        )

    def get_model(self, stage: str) -> torch.nn.Module:
        """The one model of the run, with the backbone frozen when the stage asks for it."""
        frozen = bool(get_by_keys(self.stage_configs, stage, "freeze_backbone", default=False))
        return freeze_backbone(self.model, self.model_settings.arch, frozen=frozen)

    def get_criterion(self, stage: str):
        """The stage's criterion; `class_weights: true` weights classes by inverse frequency."""
        params = deepcopy(get_by_keys(self.stage_configs, stage, "criterion", default={}))
        if not params:
            return None
        if params.pop("class_weights", False):
            counts = torch.tensor(
                list(self.data.class_counts["train"].values()), dtype=torch.float
            )
            params["weight"] = counts.sum() / (len(counts) * counts.clamp(min=1))
        return REGISTRY.get_from_params(**params)

    def get_scheduler(self, optimizer, stage: str):
        """The stage's scheduler, given `epochs` / `steps_per_epoch` when its class takes them."""
        params = deepcopy(get_by_keys(self.stage_configs, stage, "scheduler", default={}))
        if not params:
            return None
        accepted = inspect.signature(REGISTRY.get(params["_target_"])).parameters
        lengths = {"epochs": self.stage_epoch_len, "steps_per_epoch": len(self.loaders["train"])}
        params.update({k: v for k, v in lengths.items() if k in accepted and k not in params})
        return REGISTRY.get_from_params(**params, optimizer=optimizer)

    def get_callbacks(self, stage: str):
        """The config's callbacks plus the throughput and history the export relies on."""
        callbacks = super().get_callbacks(stage)

        def present(kind) -> bool:
            return any(callback_isinstance(callback, kind) for callback in callbacks.values())

        if not present(ThroughputCallback):
            callbacks["_throughput"] = ThroughputCallback()
        if not present(HistoryCallback):
            callbacks["_history"] = HistoryCallback(self.run_dir)
        max_minutes = get_by_keys(self.stage_configs, stage, "max_minutes", default=None)
        if max_minutes is not None and not present(TimeBudgetCallback):
            callbacks["_time_budget"] = TimeBudgetCallback(max_minutes)
        return callbacks

    # ------------------------------------------------------------------------ events

    def handle_batch(self, batch):
        """Augment (train) or centre-crop (valid) a uint8 batch on the training device when
        the loader left that to us; in training, the progressive size and mixup / CutMix
        (soft targets under `loss_targets`, hard ones stay under `targets` for the metrics);
        then the forward pass; images channels-last when the model is."""
        features = batch[self.input_key]
        transform = self._batch_transforms.get(self.loader_key)
        if transform is not None:
            features = transform(features)
        batch[LOSS_TARGETS] = batch[self.target_key]
        if self.is_train_loader:
            if self.progressive.enabled:
                side = self.progressive.size(
                    self.data_settings.img_size, self.stage_epoch_step, self.stage_epoch_len
                )
                features = self.progressive.resize(features, side)
            if self._mixer is not None:
                features, batch[LOSS_TARGETS] = self._mixer(features, batch[self.target_key])
        if self.model_settings.channels_last:
            features = features.contiguous(memory_format=torch.channels_last)
        batch[self.input_key] = features
        super().handle_batch(batch)

    def on_stage_start(self, runner) -> None:
        """Set the stage up, then restore the resumed checkpoint or the previous stage's model."""
        super().on_stage_start(runner)
        if self._resume_point is not None and self.stage_key == self._resume_point.stage:
            resume.restore(self, self._resume_point, self.run_dir)
        elif self.engine.is_ddp and self.stages.index(self.stage_key) > 0:
            # Each stage runs in freshly spawned workers, whose model and counters are the
            # parent's initial ones: carry the previous stage over through its last checkpoint.
            resume.carry_over(self, self.run_dir)

    def on_epoch_start(self, runner) -> None:
        """Reseed the loaders' shuffling from the epoch number (see below)."""
        super().on_epoch_start(runner)
        # The loaders' generators would otherwise carry state from epoch to epoch, so a resumed
        # run would shuffle and augment differently from an uninterrupted one.
        for loader in self.loaders.values():
            generator = getattr(loader, "generator", None)
            if generator is not None:
                generator.manual_seed(self.seed + self.global_epoch_step)

    def on_experiment_start(self, runner) -> None:
        """Start the clock of the final table."""
        self._started = time.perf_counter()
        super().on_experiment_start(runner)

    def on_experiment_end(self, runner) -> None:
        """After a successful run: weights file, picture, the final table, the finished mark."""
        super().on_experiment_end(runner)
        if self.exception is not None:
            return
        settings = self.export_settings
        weights = write_weights_file(
            self.run_dir, settings.weights, arch=self.model_settings.arch, config=self.config
        )
        plot_history(self.run_dir, settings.picture, weights)
        print(summary_table(self.run_dir, weights, time.perf_counter() - self._started))
        print(f"weights: {settings.weights}\npicture: {settings.picture}\nlogs:    {self.run_dir}")
        resume.mark_finished(self.run_dir, settings.weights)

    def run(self) -> ImageClassifierRunner:
        """Run the experiment; bad input exits 2; Ctrl-C or SIGTERM exit 130 with the resume
        command."""
        try:
            with sigterm_as_keyboard_interrupt():
                return super().run()
        except InputError as error:
            exit_for_input_error(error)
        except KeyboardInterrupt:
            print(f"\ninterrupted; {resume.resume_hint(self.run_dir)}", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None
        return self


@contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """While the run lasts, SIGTERM (`kill`, a scheduler's stop) raises KeyboardInterrupt in
    the main thread, so it ends like Ctrl-C instead of killing the process mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
