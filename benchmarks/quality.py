"""Model quality: test macro-F1 and training time of a training config over several seeds.

    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/quality.py --setting low
    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/quality.py --setting full
    .venv/bin/python benchmarks/quality.py --setting low --config my.yaml --label mine
    .venv/bin/python benchmarks/quality.py --setting low --epochs 25   # 400 steps, see below

Each seed is one real `catalyst-dl run --config configs/config.yaml [--config ...]` on the
bundled sign-language digits (data/demo/sign_language_digits), then `utils/inference.py` on the
held-out test part. The test part is the one `make demo` holds out (a seeded stratified 15% per
class, `imgclf.demo.urls.stratified_rows` with the demo's seed 0), the same for every seed and
setting, so all rows of all runs score the same 310 images.
  full  every other image trains or validates (`data.val_fraction` 0.15, split by the seed):
        `make demo`'s data at the config's image size;
  low   per class, a seeded sample of --per-class training images plus --per-class / 5
        validation images (low data and a small, noisy validation set), at --img-size px;
  imbalanced  the same, but 2 x --per-class down to --per-class / 3 training images per
        class (a geometric long tail, ratio 6, over a seeded order of the classes).
The run folders are built under --workdir as a class-folder root of symlinks plus a
`manifest.csv` whose `split` column marks the test rows: the way to train on any class-folder
data with a test part of your own. The seed sets the low-data sample, the valid split, the
initialisation, the shuffling and the augmentation. Extra --config files are merged after the
benchmark's own overrides' base (configs/config.yaml), then the overrides (data root, seed,
logdir, outputs under --workdir) last. Each model is scored twice, plain (`--no-tta`) and
averaged with its mirror (`--tta`); the table prints per-seed values, median and range.
With the default `data.min_epoch_images: 1024` a low-data epoch is 16 steps of 64, so the
default's 100 epochs are 1,600 steps; `--epochs 25` gives the 400 steps that one-pass epochs
(the old default, 4 steps each) had in 100, for comparisons at equal training.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf.dataset.samples import hash_files  # noqa: E402
from imgclf.demo.urls import list_images, stratified_rows  # noqa: E402
from imgclf.fileio import atomic_write_text  # noqa: E402

DIGITS = ROOT / "data" / "demo" / "sign_language_digits"
CATALYST_DL = Path(sys.executable).parent / "catalyst-dl"
# make demo's test split: tools/demo.py's defaults.
DEMO_TEST_FRACTION, DEMO_SEED = 0.15, 0


def build_root(workdir: Path, setting: str, seed: int, per_class: int) -> tuple[Path, float]:
    """A data root for one run (symlinked class folders + manifest.csv), and its val_fraction."""
    images = list_images(DIGITS)
    rows = stratified_rows(images, DIGITS, test_fraction=DEMO_TEST_FRACTION, seed=DEMO_SEED)
    paths = [unquote(row.path.lstrip("/")) for row in rows]
    split = {path: row.split for path, row in zip(paths, rows, strict=True)}
    labels = {path: row.label for path, row in zip(paths, rows, strict=True)}
    keep = list(paths)
    val_fraction = 0.15
    if setting in ("low", "imbalanced"):
        counts = class_counts(sorted(images), setting, seed, per_class)
        n_valid = {label: max(2, count // 5) for label, count in counts.items()}
        keep = [path for path in paths if split[path] == "test"]
        for label, count in counts.items():
            pool = sorted(p for p in paths if labels[p] == label and split[p] != "test")
            random.Random(f"quality:{seed}:{label}").shuffle(pool)
            keep += pool[: count + n_valid[label]]
        # The stratified valid split takes this fraction of every class.
        val_fraction = sum(n_valid.values()) / (sum(counts.values()) + sum(n_valid.values()))
    root = workdir / f"data-{setting}-{seed}" if setting != "full" else workdir / "data-full"
    root.mkdir(parents=True, exist_ok=True)
    for label in images:
        link = root / label
        if not link.exists():
            # Two benchmark runs side by side may build the same root at once.
            with contextlib.suppress(FileExistsError):
                link.symlink_to(DIGITS / label, target_is_directory=True)
    keep.sort()
    digests = hash_files([DIGITS / path for path in keep])
    manifest = io.StringIO(newline="")
    writer = csv.writer(manifest)
    writer.writerow(["url", "label", "split", "status", "path", "sha256"])
    for path, digest in zip(keep, digests, strict=True):
        split_value = "test" if split[path] == "test" else ""
        writer.writerow(["", labels[path], split_value, "ok", path, digest])
    # Atomic: a run side by side may be reading this root's manifest while it is rewritten.
    atomic_write_text(root / "manifest.csv", manifest.getvalue())
    return root, val_fraction


def class_counts(labels: list[str], setting: str, seed: int, per_class: int) -> dict[str, int]:
    """Training images per class: `per_class` each for `low`; for `imbalanced` a geometric
    spread from 2 x per_class down to per_class / 3 (ratio 6) over a seeded order of the
    classes, like the long tail of real collected data."""
    if setting == "low":
        return {label: per_class for label in labels}
    order = list(labels)
    random.Random(f"quality-imbalance:{seed}").shuffle(order)
    top, ratio = 2 * per_class, 6.0
    steps = max(1, len(order) - 1)
    return {
        label: max(2, round(top / ratio ** (rank / steps))) for rank, label in enumerate(order)
    }


def train_and_test(args: argparse.Namespace, seed: int) -> dict:
    """One training run and its test report: macro-F1, time, exported epoch and rule."""
    root, val_fraction = build_root(args.workdir, args.setting, seed, args.per_class)
    run = args.workdir / f"{args.label}-{args.setting}-{seed}"
    data: dict = {"root": str(root), "val_fraction": val_fraction, "num_workers": 0}
    if args.img_size:
        data["img_size"] = args.img_size
    overrides: dict = {
        "args": {"logdir": str(run / "logs"), "seed": seed},
        "data": data,
        "export": {"weights": str(run / "model.pth"), "picture": str(run / "logs.png")},
    }
    if args.epochs:
        overrides["stages"] = {"train": {"num_epochs": args.epochs}}
    # The benchmark's own scratch folder: a fresh run (training refuses to start a new run in
    # the logdir of an old one).
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    override_file = run / "overrides.yaml"
    override_file.write_text(yaml.safe_dump(overrides), encoding="utf-8")
    configs = [ROOT / "configs" / "config.yaml", *args.config, override_file]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    train = subprocess.run(
        [str(CATALYST_DL), "run", "--config", *map(str, configs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    (run / "train.log").write_text(train.stdout + train.stderr, encoding="utf-8")
    if train.returncode != 0:
        raise SystemExit(f"training failed (exit {train.returncode}); see {run / 'train.log'}")
    # Both ways of reading the same model: plain, and averaged with the mirror (--tta).
    scores = {tta: test_macro_f1(args, run, env, tta) for tta in ("--no-tta", "--tta")}
    table = train.stdout.splitlines()
    return {
        "seed": seed,
        "test_f1": scores["--no-tta"],
        "test_f1_tta": scores["--tta"],
        "seconds": seconds,
        "train_seconds": _table_value(table, "training time"),
        "epoch": _table_value(table, "best epoch"),
        "rule": _table_value(table, "exported by"),
    }


def test_macro_f1(args: argparse.Namespace, run: Path, env: dict, tta: str) -> float:
    """`utils/inference.py`'s test macro-F1 for the run's exported weights, with `tta`."""
    out = run / ("report-tta" if tta == "--tta" else "report")
    report = subprocess.run(
        [
            sys.executable,
            "utils/inference.py",
            "--weights",
            str(run / "model.pth"),
            *("--out", str(out), "--pictures", str(out)),
            # The point value is all the table needs; in-process loading is cheaper on 2 cores.
            *("--bootstrap", "100", "--workers", "0", tta),
            *args.inference_args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if report.returncode != 0:
        raise SystemExit(f"evaluation failed: {report.stderr.strip()[-500:]}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return metrics["metrics"]["f1_macro"]["value"]


def _table_value(lines: list[str], name: str) -> str:
    """A value of the final training table (`name  value`), or '' when absent."""
    for line in lines:
        if line.startswith(name + " "):
            return line[len(name) :].strip()
    return ""


def span(values: list[float], digits: int) -> str:
    """`median (min-max)`."""
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=("low", "imbalanced", "full"), default="low")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        help="extra config merged after configs/config.yaml (repeatable)",
    )
    parser.add_argument("--label", default="default", help="name of this config in the table")
    parser.add_argument("--per-class", type=int, default=30, help="low: training images/class")
    parser.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="data.img_size (default: 48 for low, the config's for full)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="stages.train.num_epochs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgclf-quality"))
    parser.add_argument(
        "--inference-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="passed to utils/inference.py after the --no-tta / --tta of its two reports "
        "(e.g. --backend onnxruntime)",
    )
    args = parser.parse_args(argv)
    if args.img_size is None and args.setting != "full":
        args.img_size = 48
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        result = train_and_test(args, seed)
        results.append(result)
        print(
            f"seed {seed}: test macro-F1 {result['test_f1']:.4f} "
            f"(--tta {result['test_f1_tta']:.4f}), run {result['seconds']:.0f} s "
            f"(training {result['train_seconds']}), exported epoch {result['epoch']} "
            f"{result['rule']}",
            flush=True,
        )
    f1s = [r["test_f1"] for r in results]
    f1s_tta = [r["test_f1_tta"] for r in results]
    seconds = [r["seconds"] for r in results]
    print(
        "\n| setting | config | seeds | test macro-F1 per seed | median (range) | "
        "with --tta, median (range) | run time s, median (range) |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    print(
        f"| {args.setting} | {args.label} | {' '.join(map(str, args.seeds))} | "
        f"{' / '.join(f'{v:.3f}' for v in f1s)} | {span(f1s, 3)} | {span(f1s_tta, 3)} | "
        f"{span(seconds, 0)} |"
    )
    out = args.workdir / f"{args.label}-{args.setting}.json"
    out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
