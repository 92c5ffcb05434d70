"""The training stage: importing it registers the components and installs the Catalyst repairs.

The configs set no `args.expdir` (a path Catalyst resolves against the current folder before
any of our code runs, so `catalyst-dl run` would only work from the repository root): the
runner's `_target_: imgclf.train.runner.ImageClassifierRunner` imports this package instead.
Given as `--expdir imgclf/train`, Catalyst executes this file as a top-level module named
"train", so it must only import (absolute imports; relative ones would fail) and register.
Configs name every component by its fully qualified `_target_`, which distributed workers can
rebuild without this registration; the short names registered here are for users' own configs.
"""

from catalyst.registry import REGISTRY

from imgclf.train import catalyst_compat
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

# The one place where imgclf changes process-wide state for training (what and why: see
# catalyst_compat.install). Every process that imports any imgclf.train module runs this,
# distributed workers included.
catalyst_compat.install()

__all__ = [
    "AtomicCheckpointCallback",
    "AutoDistributedEngine",
    "HistoryCallback",
    "ImageClassifierRunner",
    "ThroughputCallback",
    "WarmupCosineLR",
]
