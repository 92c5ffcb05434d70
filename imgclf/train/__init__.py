"""The training stage, and the Catalyst experiment folder (`args.expdir: imgclf/train`).

`catalyst-dl run` executes this file as a top-level module named "train", so it must only import
(absolute imports; relative ones would fail), register, and install the Catalyst repairs.
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
