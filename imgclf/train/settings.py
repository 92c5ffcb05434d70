"""The imgclf-specific blocks of a training config, checked before any work starts.

Catalyst builds the stage components (criterion, optimizer, scheduler, callbacks) from their
`_target_` nodes; what it does not know about lives in three top-level blocks read here:
`data:` (where the images are and how they are fed), `model:` (architecture and initialisation)
and `export:` (where the final weights and picture go). Every bad value raises InputError with
one sentence naming the key, so `catalyst-dl run` can stop with exit code 2 and no traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.dataset.presets import DEFAULT_HFLIP_PROB, POLICIES
from imgclf.errors import InputError
from imgclf.model.factory import ARCHITECTURES

# The one stage every config must have; a user shortens or lengthens training through it.
MAIN_STAGE = "train"


def unknown_key_error(
    where: str, key: Any, valid: Sequence[str], source: str = "the config"
) -> InputError:
    """InputError naming the unknown `key` of block `where` (empty: top level) in `source`,
    and the nearest valid key (difflib), or all of them when none is near."""
    prefix = f"{where}." if where else ""
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if near:
        hint = f"did you mean {prefix}{near[0]}?"
    else:
        hint = f"valid keys{' of ' + where if where else ''}: {', '.join(valid)}."
    return InputError(f"Unknown config key {prefix}{key} in {source}; {hint}")


def _block(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise InputError(f"Config block {name!r} must be a mapping of keys, got {value!r}.")
    return value


def _number(
    block: dict[str, Any], where: str, key: str, default: Any, kind: type, low: float, high=None
):
    value = block.get(key, default)
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    if valid and kind is int:
        valid = float(value).is_integer()
    if not valid or value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        what = "an integer" if kind is int else "a number"
        raise InputError(f"{where}.{key} is {value!r}; it must be {what} {bounds}.")
    return kind(value)


def _flag(block: dict[str, Any], where: str, key: str, default: bool) -> bool:
    """A true/false key: YAML reads `ture` or `yes please` as a string, which bool() would
    silently turn into True."""
    value = block.get(key, default)
    if not isinstance(value, bool):
        raise InputError(f"{where}.{key} is {value!r}; it must be true or false.")
    return value


def _workers(block: dict[str, Any]) -> int | None:
    """data.num_workers: a count, or "auto" (the default) → None."""
    if block.get("num_workers", "auto") == "auto":
        return None
    try:
        return _number(block, "data", "num_workers", None, int, 0)
    except InputError:
        value = block["num_workers"]
        raise InputError(
            f"data.num_workers is {value!r}; it must be auto or an integer at least 0."
        ) from None


def _names(block: dict[str, Any], key: str) -> tuple[str, ...] | None:
    """`data.<key>`: a list of class names (folder names), or None when absent."""
    value = block.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) for v in value):
        raise InputError(f"data.{key} is {value!r}; give a list of class names like ['3', '7'].")
    return tuple(str(v) for v in value)


@dataclass(frozen=True)
class DataSettings:
    """The `data:` block: what the dataset stage needs and how batches are formed."""

    root: Path
    img_size: int = 64
    val_fraction: float = 0.15
    batch_size: int = 64
    num_workers: int | None = None  # None: "auto", see imgclf.dataset.loaders.training_workers
    cache_dir: Path | None = None
    balanced: bool = False
    min_epoch_images: int = 0
    augment: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None  # None: every class of the data root
    exclude_classes: tuple[str, ...] = ()
    # Read and checked by imgclf.train.mixing.MixSettings and .progressive.ProgressiveResize;
    # fields here so that every key of `data:` is a field of this class.
    mixing: dict[str, Any] = field(default_factory=dict)
    progressive: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DataSettings:
        """Read and check `config["data"]`."""
        block = _block(config, "data")
        if not block.get("root"):
            raise InputError("data.root is missing; set it to the folder of images to train on.")
        augment = block.get("augment") or {}
        if not isinstance(augment, dict):
            raise InputError(f"data.augment must be a mapping, got {augment!r}.")
        known = ("color_jitter", "hflip_prob", "policy", "policy_magnitude", "scale")
        unknown = [key for key in augment if key not in known]
        if unknown:
            raise unknown_key_error("data.augment", unknown[0], known)
        if "scale" in augment:
            scale = augment["scale"]
            if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= 1):
                raise InputError(
                    f"data.augment.scale is {scale!r}; give two fractions like [0.35, 1.0]."
                )
            augment = {**augment, "scale": tuple(scale)}
        if augment.get("policy", "none") not in POLICIES:
            raise InputError(
                f"data.augment.policy is {augment['policy']!r}; use one of {', '.join(POLICIES)}."
            )
        if "hflip_prob" in augment:  # export.tta: auto reads it too
            _number(augment, "data.augment", "hflip_prob", None, float, 0.0, 1.0)
        if "policy_magnitude" in augment:
            _number(augment, "data.augment", "policy_magnitude", None, float, 0.0, 1.0)
        cache_dir = block.get("cache_dir")
        classes, exclude = (_names(block, key) for key in ("classes", "exclude_classes"))
        return cls(
            root=Path(block["root"]),
            img_size=_number(block, "data", "img_size", cls.img_size, int, 16, 1024),
            val_fraction=_number(
                block, "data", "val_fraction", cls.val_fraction, float, 0.01, 0.9
            ),
            batch_size=_number(block, "data", "batch_size", cls.batch_size, int, 1),
            num_workers=_workers(block),
            cache_dir=Path(cache_dir) if cache_dir else None,
            balanced=_flag(block, "data", "balanced", cls.balanced),
            min_epoch_images=_number(block, "data", "min_epoch_images", 0, int, 0),
            augment=augment,
            classes=classes,
            exclude_classes=exclude or (),
            mixing=dict(block.get("mixing") or {}),
            progressive=dict(block.get("progressive") or {}),
        )


@dataclass(frozen=True)
class ModelSettings:
    """The `model:` block: which network and how it starts."""

    arch: str = "mobilenet_v3_small"
    pretrained: str | None = None
    # torchvision's mobilenet_v3 uses 0.01: with few steps from scratch the eval-mode running
    # statistics lag far behind the weights and validation collapses to one class.
    bn_momentum: float | None = 0.1
    channels_last: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelSettings:
        """Read and check `config["model"]`."""
        block = _block(config, "model")
        arch = block.get("arch", cls.arch)
        if arch not in ARCHITECTURES:
            raise InputError(
                f"Unknown architecture {arch!r} in model.arch; "
                f"use one of: {', '.join(ARCHITECTURES)}."
            )
        pretrained = block.get("pretrained")
        if pretrained in ("", "none", "None", False):
            pretrained = None
        momentum = block.get("bn_momentum", cls.bn_momentum)
        if momentum is not None:
            momentum = _number(block, "model", "bn_momentum", momentum, float, 0.0, 1.0)
        return cls(
            arch=arch,
            pretrained=None if pretrained is None else str(pretrained),
            bn_momentum=momentum,
            channels_last=_flag(block, "model", "channels_last", cls.channels_last),
        )


@dataclass(frozen=True)
class ExportSettings:
    """The `export:` block: where the final weights file and training picture are written,
    and whether inference averages each image with its mirror by default (`tta`)."""

    weights: Path
    picture: Path
    tta: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any], arch: str) -> ExportSettings:
        """Read `config["export"]`; `{arch}` in the weights path is replaced by the arch.
        `tta: auto` is on when training flipped images (`data.augment.hflip_prob` > 0): such
        a model has learnt that a mirrored image is the same class."""
        block = _block(config, "export")
        weights = str(block.get("weights", "weights/{arch}.pth"))
        tta = block.get("tta", "auto")
        if tta != "auto" and not isinstance(tta, bool):  # YAML's 1 or "yes" is neither
            raise InputError(f"export.tta is {tta!r}; use auto, true or false.")
        if tta == "auto":
            augment = _block(config, "data").get("augment") or {}
            tta = float(augment.get("hflip_prob", DEFAULT_HFLIP_PROB)) > 0
        return cls(
            weights=Path(weights.replace("{arch}", arch)),
            picture=Path(block.get("picture", "pictures/logs.png")),
            tta=tta,
        )


def check_stages(config: dict[str, Any]) -> None:
    """The `stages:` block has a `train` stage and every stage a positive `num_epochs`."""
    stages = _block(config, "stages")
    if MAIN_STAGE not in stages:
        raise InputError(
            f"The config has no stage {MAIN_STAGE!r} under stages:; "
            "start from configs/config.yaml and override only what differs."
        )
    for name, stage in stages.items():
        if not isinstance(stage, dict):
            raise InputError(f"stages.{name} must be a mapping, got {stage!r}.")
        _number(stage, f"stages.{name}", "num_epochs", 1, int, 1)
        if stage.get("max_minutes") is not None:
            _number(stage, f"stages.{name}", "max_minutes", None, float, 0.01)
        scheduler = stage.get("scheduler") or {}
        if scheduler and not scheduler.get("_target_"):
            raise InputError(f"stages.{name}.scheduler needs a _target_ (a scheduler class path).")
    callbacks = [
        stage.get("callbacks") or {} for stage in stages.values() if isinstance(stage, dict)
    ]
    for stage_callbacks in callbacks:
        for key, node in stage_callbacks.items():
            if isinstance(node, dict) and "_target_" not in node:
                raise InputError(f"Callback {key!r} has no _target_; give its full class path.")


def logdir_of(config: dict[str, Any]) -> Path:
    """The run's logdir (`args.logdir`), required because the run's outputs are read from it."""
    logdir = (config.get("args") or {}).get("logdir")
    if not logdir or str(logdir).lower() == "none":
        raise InputError("args.logdir is not set; set it (e.g. logs/train) or pass --logdir.")
    return Path(logdir)
