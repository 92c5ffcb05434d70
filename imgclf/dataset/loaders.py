"""DataLoaders for Catalyst: {"train": shuffled or class-balanced, "valid": in order}.

The test part is never handed to training; evaluation reads it from the split.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict

import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from imgclf.dataset.prepared import PreparedData


def build_loaders(
    data: PreparedData,
    *,
    batch_size: int,
    num_workers: int,
    train_transform,
    eval_transform,
    balanced: bool = False,
    seed: int = 42,
) -> OrderedDict[str, DataLoader]:
    """{"train", "valid"} loaders over the cached images.

    balanced: draw training images with probability 1 / (count of their class), so every class
    is seen equally often per epoch (the epoch length stays the number of training images).
    The seed fixes the shuffle / sampling order and, through it, each worker's augmentation
    (with num_workers=0 the augmentation draws from the global torch RNG, which Catalyst seeds).
    """
    train = data.dataset("train", train_transform)
    valid = data.dataset("valid", eval_transform)
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if balanced:
        counts = Counter(train.targets)
        weights = torch.tensor([1.0 / counts[target] for target in train.targets])
        sampler = WeightedRandomSampler(weights, len(weights), generator=generator)
    common = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "worker_init_fn": lower_priority,
        # Workers live across epochs: restarting them costs more than a small epoch.
        "persistent_workers": num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }
    return OrderedDict(
        train=DataLoader(
            train,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator,
            # A last batch of one image breaks BatchNorm in training mode; drop the remainder.
            drop_last=len(train) > batch_size,
            **common,
        ),
        valid=DataLoader(valid, shuffle=False, **common),
    )


def lower_priority(worker_id: int) -> None:
    """Run a DataLoader worker at the lowest CPU priority.

    Where cores are scarce, a worker that preempts one of the model's threads stalls all of
    them at the next synchronisation point; at low priority the workers take the idle time
    instead (measured on 2 cores: warm epochs 0.77 → 0.84 of the ceiling). With cores to
    spare it changes nothing.
    """
    if hasattr(os, "nice"):
        os.nice(19)
