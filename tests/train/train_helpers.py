"""Shared by the training tests: tiny configs, the real `catalyst-dl run`, a test callback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from catalyst.core.callback import Callback, CallbackNode, CallbackOrder
from catalyst.utils.config import load_config
from catalyst.utils.misc import merge_dicts

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
CATALYST_DL = Path(sys.executable).parent / "catalyst-dl"


def tiny_overrides(tmp_path: Path, images: Path, epochs: int = 1, **extra: Any) -> dict:
    """Config overrides for a quick CPU run on `images`, every output under `tmp_path`."""
    overrides = {
        "args": {"logdir": str(tmp_path / "logs")},
        "data": {
            "root": str(images),
            "img_size": 32,
            "batch_size": 8,
            "num_workers": 0,
            "min_epoch_images": 0,  # one pass per epoch: the default's 1024 draws take minutes
            "cache_dir": str(tmp_path / "cache"),
            "exclude_classes": [],  # configs/fewshot.yaml leaves out digits this folder lacks
        },
        "export": {
            "weights": str(tmp_path / "weights" / "{arch}.pth"),
            "picture": str(tmp_path / "pictures" / "logs.png"),
        },
        "stages": {"train": {"num_epochs": epochs}},
    }
    return merge_dicts(overrides, extra)


def write_yaml(path: Path, data: dict) -> Path:
    """Write `data` as YAML to `path`."""
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def merged_config(*files: Path, overrides: dict | None = None) -> dict:
    """The config `catalyst-dl run --config files...` builds, plus `overrides` merged last."""
    config: dict = {}
    for file in files:
        config = merge_dicts(config, load_config(str(file), ordered=True))
    return merge_dicts(config, overrides or {})


def subprocess_environment() -> dict[str, str]:
    """This checkout's code first (not another editable install), and this folder, so that a
    config can name train_helpers' callbacks."""
    paths = [str(Path(__file__).parent), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def catalyst_run(
    *configs: Path, extra_args: tuple[str, ...] = (), timeout: int = 300, cwd: Path = ROOT
):
    """Run the real `catalyst-dl run --config ...` in `cwd` (default: the repository root)."""
    return subprocess.run(
        [str(CATALYST_DL), "run", "--config", *map(str, configs), *extra_args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_environment(),
    )


class InterruptAfterEpoch(Callback):
    """Presses Ctrl-C (raises KeyboardInterrupt) at the end of global epoch `epoch`."""

    def __init__(self, epoch: int) -> None:
        super().__init__(order=CallbackOrder.external + 1, node=CallbackNode.all)
        self.epoch = epoch

    def on_epoch_end(self, runner) -> None:
        """Interrupt once the checkpoint of `epoch` is written."""
        if runner.global_epoch_step == self.epoch:
            raise KeyboardInterrupt


class SignalAtBatch(Callback):
    """Sends this process the real signal `signal` (e.g. "SIGTERM") at the start of batch
    `batch` of global epoch `epoch` of the train loader: mid-epoch, as `kill` would."""

    def __init__(self, epoch: int, batch: int, signal: str = "SIGTERM") -> None:
        super().__init__(order=CallbackOrder.external + 1, node=CallbackNode.all)
        self.epoch, self.batch, self.signal = epoch, batch, signal

    def on_batch_start(self, runner) -> None:
        """Signal once, at the chosen train batch."""
        if (runner.global_epoch_step, runner.loader_batch_step, runner.loader_key) == (
            self.epoch,
            self.batch,
            "train",
        ):
            os.kill(os.getpid(), getattr(signal, self.signal))
