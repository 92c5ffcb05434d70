"""Distributed training that picks its backend and process count from the machine.

Catalyst's own `all_gather` (used by the precision / recall / F1 metrics) only works with CUDA;
`imgclf.train.catalyst_compat.install` repairs it in every process, distributed workers
included (they import the experiment package when they unpickle this engine).
"""

from __future__ import annotations

from typing import Any

import torch
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
