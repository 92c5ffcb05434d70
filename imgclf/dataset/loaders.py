"""DataLoaders for Catalyst: {"train": shuffled or class-balanced, "valid": in order}.

The test part is never handed to training; evaluation reads it from the split.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict

import torch
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from imgclf.dataset.prepared import PreparedData


def build_loaders(
    data: PreparedData,
    *,
    batch_size: int,
    num_workers: int,
    train_transform=None,
    eval_transform=None,
    balanced: bool = False,
    seed: int = 42,
    min_epoch_images: int = 0,
) -> OrderedDict[str, DataLoader]:
    """{"train", "valid"} loaders of (images, targets) batches over the cached images.

    Each batch is read from the cache at once and, when given, transformed at once: the
    presets take whole uint8 batches. Without transforms the batches stay uint8 NCHW (the
    cache's side), for a transform on the training device (what training does).
    balanced: draw training images with probability 1 / (count of their class), so every class
    is seen equally often per epoch (the epoch length stays the number of training images).
    min_epoch_images: a training epoch draws at least this many images: a small training part
    is gone through several times per epoch (each pass in a new order), so that an epoch is
    enough optimizer steps to be worth its fixed cost (validation, checkpoints).
    The seed fixes the shuffle / sampling order and, through it, each worker's augmentation
    (a transform in the training process draws from the global torch RNG, which Catalyst
    seeds).
    """
    train = data.dataset("train", train_transform)
    valid = data.dataset("valid", eval_transform)
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    epoch_images = max(len(train), min_epoch_images)
    if balanced:
        counts = Counter(train.targets)
        weights = torch.tensor([1.0 / counts[target] for target in train.targets])
        sampler = WeightedRandomSampler(weights, epoch_images, generator=generator)
    elif epoch_images > len(train):
        sampler = RandomSampler(train, num_samples=epoch_images, generator=generator)
    common = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "worker_init_fn": lower_priority,
        # Workers live across epochs: restarting them costs more than a small epoch.
        "persistent_workers": num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
        # The dataset reads and transforms whole batches (`CachedImages.__getitems__`).
        "collate_fn": pass_batch,
    }
    return OrderedDict(
        train=DataLoader(
            train,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator,
            # A last batch of one image breaks BatchNorm in training mode; drop the remainder.
            drop_last=epoch_images > batch_size,
            **common,
        ),
        valid=DataLoader(valid, shuffle=False, **common),
    )


def training_workers() -> int:
    """DataLoader workers per training process when the config says `num_workers: auto`.

    Without a GPU: 0. The batched augmentation costs a few percent of a training step, and
    worker processes only compete with the model for the same cores (measured:
    docs/benchmarks.md). With GPUs: the CPU cores per GPU process less one for the process
    itself (at most 8), so that augmentation overlaps the GPU's step.
    """
    gpus = torch.cuda.device_count()
    if gpus == 0:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // gpus - 1))


def place_transforms(num_workers: int, transforms: dict) -> tuple[dict, dict]:
    """(transforms for `build_loaders`, transforms for the training loop), by loader name.

    The presets run on whole batches where the batches are made: in the DataLoader workers
    when there are any, else in the training process on the training device, the loaders then
    handing out uint8 batches.
    """
    return (transforms, {}) if num_workers else ({}, transforms)


def pass_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The DataLoader's collate_fn: the dataset already returns a whole (images, targets) batch."""
    return batch


def lower_priority(worker_id: int) -> None:
    """Run a DataLoader worker at the lowest CPU priority.

    Where cores are scarce, a worker that preempts one of the model's threads stalls all of
    them at the next synchronisation point; at low priority the workers take the idle time
    instead (measured: docs/benchmarks.md). With cores to spare it changes nothing.
    """
    if hasattr(os, "nice"):
        os.nice(19)
