"""The training stage, and the Catalyst experiment folder (`args.expdir: imgclf/train`).

`catalyst-dl run` executes this file as a top-level module named "train", so it must only import
(absolute imports; relative ones would fail) and register. Configs name every component by its
fully qualified `_target_`, which distributed workers can rebuild without this registration;
the short names registered here are for users' own configs.
"""

from catalyst.registry import REGISTRY

from imgclf.train.callbacks import AtomicCheckpointCallback, HistoryCallback, ThroughputCallback
from imgclf.train.engines import AutoDistributedEngine
from imgclf.train.runner import ImageClassifierRunner
from imgclf.train.schedules import WarmupCosineLR

REGISTRY.add(
    ImageClassifierRunner,
    AtomicCheckpointCallback,
    ThroughputCallback,
    HistoryCallback,
    WarmupCosineLR,
    AutoDistributedEngine,
)

__all__ = [
    "AtomicCheckpointCallback",
    "AutoDistributedEngine",
    "HistoryCallback",
    "ImageClassifierRunner",
    "ThroughputCallback",
    "WarmupCosineLR",
]
