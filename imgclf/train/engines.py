"""Distributed training that picks its backend and process count from the machine.

Importing this module also repairs Catalyst 21.12's `all_gather` (used by the precision / recall
/ F1 metrics to combine the processes' counts): it moves its buffers to "cuda" unconditionally,
so any distributed run on CPU (gloo) crashes at the first epoch end. torch's own
`all_gather_object` does the same job on the device of the backend. Distributed workers import
this module when they unpickle the engine, so the repair reaches them too.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.distributed as dist
from catalyst.engines.torch import DistributedDataParallelEngine

# Processes per machine when there is no GPU (gloo on CPU): more than the cores only thrashes.
CPU_WORKERS = 2


class AutoDistributedEngine(DistributedDataParallelEngine):
    """Catalyst's DDP engine with NCCL and one process per GPU when GPUs exist, else gloo and
    `CPU_WORKERS` processes. Several machines: the same address / port / world_size on each,
    `workers_dist_rank` = the global rank of the machine's first process (see docs)."""

    def __init__(
        self,
        address: str = "127.0.0.1",
        port: int | str = 2112,
        world_size: int | None = None,
        workers_dist_rank: int = 0,
        num_node_workers: int | None = None,
        backend: str | None = None,
        sync_bn: bool = False,
        ddp_kwargs: dict[str, Any] | None = None,
    ) -> None:
        gpus = torch.cuda.device_count()
        num_node_workers = num_node_workers or gpus or CPU_WORKERS
        super().__init__(
            address=address,
            port=port,
            world_size=world_size or num_node_workers,
            workers_dist_rank=workers_dist_rank,
            num_node_workers=num_node_workers,
            process_group_kwargs={"backend": backend or ("nccl" if gpus else "gloo")},
            sync_bn=sync_bn,
            ddp_kwargs=ddp_kwargs,
        )


def all_gather(data: Any) -> list[Any]:
    """Every process's `data` (any picklable object), in rank order."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return [data]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, data)
    return gathered


# Catalyst's modules bound the name at import; replace it where it is used.
for _module in (
    "utils",
    "utils.distributed",
    "metrics._classification",
    "metrics._segmentation",
    "metrics._confusion_matrix",
    "metrics._auc",
):
    importlib.import_module(f"catalyst.{_module}").all_gather = all_gather
