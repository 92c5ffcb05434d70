"""Training throughput: the cached pipeline vs the model's ceiling and a plain ImageFolder loop.

    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/train_throughput.py
    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/train_throughput.py \
        --archs mobilenet_v3_small --sizes 96 --batches 4 --rounds 1   # a quick look

For each architecture and image size, images/s of training steps (forward, backward, AdamW
step; channels-last) fed by:
  ceiling  random tensors already in memory: no data loading at all (the model's limit);
  cold     imgclf.dataset from an empty cache folder: reading the folder, decoding every image
           into the cache, then one epoch (the first epoch of a fresh run), with the default
           `num_workers: auto` (0 workers without a GPU: augmentation in the training process);
  warm     the next epoch, as a default run makes it: batches from the cache augmented whole
           (TrainPreset) in the training process on its device when `auto` gives 0 workers,
           else in the workers;
  workers  the same with --workers DataLoader workers (augmenting in the workers);
  folder   torchvision ImageFolder decoding every JPEG every epoch, the same augmentation steps
           as v2 transforms per image, the same model, batch size and workers: the loop most
           people write.
Epochs are cut to --batches timed batches (cold is extrapolated to the whole train part) so a
full run stays within a few minutes on 2 cores. Each round measures every feeder in turn and the
medians over --rounds rounds are printed, so load from other processes hits all of them alike.
The JPEG files may sit in the OS page cache: "cold" means cold imgclf cache, not cold disk.
The demo photos are small (100 px); --photo-side 500 runs on an enlarged copy, the size of
typical web photos, where decoding costs more and the cache saves more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf.dataset import PreparedData, build_loaders, prepare_data  # noqa: E402
from imgclf.dataset.loaders import place_transforms, training_workers  # noqa: E402
from imgclf.dataset.presets import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainPreset,
)
from imgclf.model.factory import ARCHITECTURES, build_model  # noqa: E402

DEMO = ROOT / "data" / "demo" / "sign_language_digits"
COLUMNS = ("ceiling", "cold", "warm", "workers", "folder")
# printed ratio → (numerator, denominator) columns
RATIOS = {
    "warm/ceil": ("warm", "ceiling"),
    "workers/ceil": ("workers", "ceiling"),
    "warm/folder": ("warm", "folder"),
    "cold/folder": ("cold", "folder"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=DEMO, help="folder of <label>/ JPEGs")
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--sizes", nargs="+", type=int, default=[96, 224], help="img_size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "configs" / "config.yaml",
        help="training config whose data.augment the cached pipeline and the folder loop use",
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="repeats; medians are reported")
    parser.add_argument(
        "--photo-side",
        type=int,
        default=0,
        help="if set, benchmark a temporary copy of --data enlarged to this shorter side (px)",
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the model trains (the data pipeline runs on the CPU either way)",
    )
    return parser.parse_args(argv)


class Trainer:
    """One model + optimiser; `run(batches)` trains on them and returns images/s."""

    def __init__(self, arch: str, num_classes: int, channels_last: bool, device: str) -> None:
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.model = build_model(arch, num_classes).train()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(self.device, memory_format=self.memory_format)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.loss = nn.CrossEntropyLoss()

    def step(self, images: torch.Tensor, targets: torch.Tensor, transform=None) -> None:
        images = images.to(self.device, non_blocking=True)
        if transform is not None:  # on the device, as ImageClassifierRunner.handle_batch does
            images = transform(images)
        images = images.contiguous(memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model(images), targets).backward()
        self.optimizer.step()

    def run(self, batches: Iterable, limit: int, transform=None) -> float:
        """Train on up to `limit` batches, each passed through `transform` on the device first;
        images/s including the time spent waiting for data."""
        seen, start = 0, time.perf_counter()
        for index, (images, targets) in enumerate(batches):
            if index == limit:
                break
            self.step(images, targets, transform)
            seen += len(targets)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the GPU runs behind the Python loop
        return seen / (time.perf_counter() - start)


def ceiling(trainer: Trainer, args: argparse.Namespace, size: int, classes: int) -> float:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, size, size, generator=generator)
    targets = torch.randint(0, classes, (args.batch_size,), generator=generator)
    images, targets = images.to(trainer.device), targets.to(trainer.device)
    return trainer.run([(images, targets)] * args.batches, args.batches)


def pipeline(trainer: Trainer, args: argparse.Namespace, size: int) -> tuple[float, ...]:
    """(cold, warm, warm with workers) images/s of training epochs through imgclf.dataset.

    cold: from an empty cache folder, reading the folder and building the cache (all images,
    every part) plus one epoch: its first --batches batches timed (workers starting), the
    rest of the train part counted at the warm rate.
    warm: the next epoch, the cache built (and any DataLoader workers started).
    warm with workers: the same with --workers DataLoader workers.
    """
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-cache-") as cache_dir:
        start = time.perf_counter()
        data = prepare_data(args.data, img_size=size, cache_dir=cache_dir, progress=False)
        batches, augment = train_batches(data, args, size, training_workers())
        setup = time.perf_counter() - start
        timed = args.batches * args.batch_size
        first_batches = timed / trainer.run(batches, args.batches, augment)  # seconds
        warm = trainer.run(batches, args.batches, augment)
        # The rest of a cold epoch runs at the warm rate: the cache is complete by then.
        epoch = len(data.parts["train"])
        cold = epoch / (setup + first_batches + max(0, epoch - timed) / warm)
        batches, augment = train_batches(data, args, size, args.workers)
        trainer.run(batches, 1, augment)  # start the workers outside the timing
        with_workers = trainer.run(batches, args.batches, augment)
        return cold, warm, with_workers


def train_batches(data: PreparedData, args: argparse.Namespace, size: int, workers: int):
    """(train loader, transform for the training loop) as ImageClassifierRunner sets them up:
    TrainPreset in the DataLoader workers when there are any, else on the training device."""
    preset = TrainPreset(img_size=size, **config_augment(args.config))
    in_loaders, in_training = place_transforms(workers, {"train": preset})
    loaders = build_loaders(
        data,
        batch_size=args.batch_size,
        num_workers=workers,
        train_transform=in_loaders.get("train"),
    )
    return loaders["train"], in_training.get("train")


def config_augment(config: Path) -> dict:
    """The `data.augment` block of a training config: what a default run augments with."""
    augment = dict(
        (yaml.safe_load(config.read_text(encoding="utf-8")).get("data") or {}).get("augment") or {}
    )
    if "scale" in augment:
        augment["scale"] = tuple(augment["scale"])
    return augment


def usual_transform(size: int, config: Path) -> v2.Compose:
    """The per-image train transform most people write: the same steps as TrainPreset with
    the config's augmentation (torchvision's TrivialAugmentWide for `policy: trivial`)."""
    augment = {**TrainPreset(img_size=size).__dict__, **config_augment(config)}
    jitter = augment["color_jitter"]
    policy = [v2.TrivialAugmentWide()] if augment.get("policy") == "trivial" else []
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(size, scale=augment["scale"], antialias=True),
            v2.RandomHorizontalFlip(augment["hflip_prob"]),
            *policy,
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def imagefolder(trainer: Trainer, args: argparse.Namespace, size: int) -> float:
    dataset = ImageFolder(str(args.data), transform=usual_transform(size, args.config))
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=True,
    )
    trainer.run(loader, 1)  # start the workers outside the timing, like the warm epochs of (b)
    return trainer.run(loader, args.batches)


def measure(arch: str, size: int, classes: int, args: argparse.Namespace) -> dict[str, list]:
    """images/s of each feeder in each of --rounds rounds; every round measures all feeders
    in turn, so that load from other processes hits them alike."""
    trainer = Trainer(arch, classes, args.channels_last, args.device)
    ceiling(trainer, args, size, classes)  # warm-up: allocator, kernels
    rounds: dict[str, list[float]] = {name: [] for name in COLUMNS}
    for _ in range(args.rounds):
        rounds["ceiling"].append(ceiling(trainer, args, size, classes))
        cold, warm, with_workers = pipeline(trainer, args, size)
        rounds["cold"].append(cold)
        rounds["warm"].append(warm)
        rounds["workers"].append(with_workers)
        rounds["folder"].append(imagefolder(trainer, args, size))
    return rounds


def ratio(rounds: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over rounds of the ratio within each round (robust to load that drifts)."""
    return statistics.median(a / b for a, b in zip(rounds[top], rounds[bottom], strict=True))


def enlarged_copy(source: Path, side: int, target: Path) -> Path:
    """Copy `source`'s `<label>/*` images into `target`, shorter side resized to `side` px
    (JPEG quality 90): photo-sized files, whose decoding costs what web images cost."""
    from PIL import Image

    files = sorted(p for p in source.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = side / min(image.size)
            size = (round(image.width * scale), round(image.height * scale))
            (target / path.parent.name).mkdir(parents=True, exist_ok=True)
            out = target / path.parent.name / f"{path.stem}.jpg"
            image.resize(size, Image.Resampling.BICUBIC).save(out, quality=90)
    return target


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-photos-") as photos:
        if args.photo_side:
            print(f"copying {args.data} with the shorter side enlarged to {args.photo_side} px")
            args.data = enlarged_copy(args.data, args.photo_side, Path(photos))
        report(args)


def report(args: argparse.Namespace) -> None:
    classes = len([p for p in args.data.iterdir() if p.is_dir() and not p.name.startswith(".")])
    print(
        f"{args.data}: {classes} classes; batch {args.batch_size}, "
        f"{training_workers()} workers by default (auto), "
        f"{args.workers} in 'workers' and 'folder', "
        f"{args.batches} timed batches per epoch, median of {args.rounds} rounds, "
        f"{torch.get_num_threads()} torch threads, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
        + ", "
        f"channels_last={args.channels_last}"
    )
    header = (
        f"{'arch':<20}{'px':>5}"
        + "".join(f"{name:>9}" for name in COLUMNS)
        + "".join(f"{name:>13}" for name in RATIOS)
    )
    print("images/s of training steps, and their ratios: medians over the rounds\n" + header)
    for arch in args.archs:
        for size in args.sizes:
            rounds = measure(arch, size, classes, args)
            print(
                f"{arch:<20}{size:>5}"
                + "".join(f"{statistics.median(rounds[name]):>9.0f}" for name in COLUMNS)
                + "".join(f"{ratio(rounds, *pair):>13.2f}" for pair in RATIOS.values()),
                flush=True,
            )


if __name__ == "__main__":
    main()
