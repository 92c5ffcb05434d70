"""CPU inference speed: the full single-image path per engine against the bare engine call.

Usage (heavy: run it alone, as the house rules ask):
    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/inference.py
    flock /tmp/imgclf-cpu.lock .venv/bin/python benchmarks/inference.py --arch mobilenet_v3_small

For each architecture at 224 px (random weights with BatchNorm statistics measured on the demo
photos: the values do not change the speed, denormal activations would), in one run:

  bare <engine>   the engine call alone on a ready (1, 3, 224, 224) tensor: eager torch,
                  TorchScript, ONNX Runtime (its single-image session: ORT's defaults, one
                  thread per core, idle threads spinning);
  bare onnxruntime: ...  the same call on sessions with the other settings measured for one
                  image: one thread, and the batch session's (one thread per core, idle
                  threads sleeping). The ceiling is the fastest bare ONNX Runtime row;
  full <engine>   `Predictor.classify(path)`: read the JPEG file, decode (EXIF, RGB), the eval
                  preset (resize, crop, normalise), the engine call, softmax;
  naive torch     what a user would write instead: torchvision's classic transforms
                  (Resize, CenterCrop, ToTensor, Normalize) and `model(x)` under `torch.no_grad()`;
  floor onnxruntime  the steps of the full path whose work is fixed, then the bare call: read
                  the file, decode, resize (libjpeg-turbo and torch's uint8 resize, the pixels
                  the model was validated on), without the crop, normalisation, layout change
                  and softmax. No full path with these pixels can beat it.

Single-image latency is the median and 95th percentile of `--repeats` calls after a warm-up,
taken in `--rounds` interleaved rounds so that a slow spell of this shared machine hits every
row alike. Batch throughput is images per second of `--batch`-image engine calls on ready
tensors, and of the whole `--predict FOLDER` path (DataLoader workers decoding while the model
runs) over the bundled demo photos. The input photo is one of the bundled 100x100 demo JPEGs,
and, to show the decoding cost of camera-sized input, the same photo saved at 640x480.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf.dataset.presets import IMAGENET_MEAN, IMAGENET_STD, resize_size_for  # noqa: E402
from imgclf.decoding import decode_rgb  # noqa: E402
from imgclf.imaging import open_rgb  # noqa: E402
from imgclf.model.engines import OnnxRuntimeEngine  # noqa: E402
from imgclf.model.export import export_model  # noqa: E402
from imgclf.model.factory import ARCHITECTURES, build_model  # noqa: E402
from imgclf.model.predictor import load_predictor  # noqa: E402
from imgclf.model.preprocessing import EvalPreset, Preprocessing  # noqa: E402
from imgclf.model.single_image import one_torch_thread  # noqa: E402
from imgclf.model.spec import INPUT_NAME, OUTPUT_NAME  # noqa: E402
from imgclf.model.weights import WeightsFile, save_weights  # noqa: E402
from imgclf.predict.batches import predict_items  # noqa: E402
from imgclf.predict.inputs import Item, expand_inputs  # noqa: E402

DEMO = ROOT / "data" / "demo" / "sign_language_digits"
IMG_SIZE = 224
CLASSES = [str(digit) for digit in range(10)]
GOAL = 1.3


def timed(call: Callable[[], object], repeats: int, warmup: int = 10) -> np.ndarray:
    """Milliseconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = np.empty(repeats)
    for index in range(repeats):
        start = time.perf_counter()
        call()
        times[index] = time.perf_counter() - start
    return times * 1e3


def timed_rounds(
    calls: dict[str, Callable[[], object]], repeats: int, rounds: int
) -> dict[str, np.ndarray]:
    """Milliseconds of `repeats` calls of each, in `rounds` interleaved rounds."""
    times: dict[str, list[np.ndarray]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(timed(call, max(1, repeats // rounds)))
    return {name: np.concatenate(parts) for name, parts in times.items()}


def calibrated_model(arch: str, preset: EvalPreset) -> torch.nn.Module:
    """Random weights whose BatchNorm statistics are measured on demo photos.

    With the default statistics (mean 0, variance 1) a random network's activations shrink to
    denormal floats, which CPUs compute many times slower: the timings would be fiction.
    """
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    calibration = sorted(DEMO.rglob("*.jpg"))[::32]
    with torch.no_grad():
        model.train()(torch.stack([preset(open_rgb(path)) for path in calibration]))
    return model.eval()


def write_weights(arch: str, folder: Path) -> Path:
    """A weights file of `arch` at 224 px (see calibrated_model), plus its two exports."""
    preprocessing = Preprocessing.for_img_size(IMG_SIZE)
    preset = EvalPreset(preprocessing)
    path = folder / f"{arch}.pth"
    weights = WeightsFile(
        arch=arch,
        classes=CLASSES,
        state_dict=calibrated_model(arch, preset).state_dict(),
        preprocessing=preprocessing,
    )
    save_weights(path, weights)
    for fmt in ("onnx", "torchscript"):
        export_model(path, fmt)
    return path


def photos(folder: Path) -> dict[str, Path]:
    """The demo photo as it is (100x100) and saved at 640x480, as JPEG files."""
    source = sorted((DEMO / "3").glob("*.jpg"))[0]
    large = folder / "photo_640x480.jpg"
    open_rgb(source).resize((640, 480), Image.BICUBIC).save(large, quality=90)
    return {"100x100": source, "640x480": large}


def naive_torch(weights: Path) -> Callable[[Path], np.ndarray]:
    """What a user would write: classic transforms and `model(x)` under no_grad."""
    model = load_predictor(weights, "torch").engine.model.to(memory_format=torch.contiguous_format)
    preprocess = transforms.Compose(
        [
            transforms.Resize(resize_size_for(IMG_SIZE)),
            transforms.CenterCrop(IMG_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )

    def run(path: Path) -> np.ndarray:
        with torch.no_grad():
            image = Image.open(path).convert("RGB")
            return torch.softmax(model(preprocess(image)[None]), dim=1).numpy()

    return run


def ort_run(session, batch: torch.Tensor) -> np.ndarray:
    """A bare call of an ONNX Runtime session on a ready tensor."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]


def fixed_steps_then_bare(predictor, path: Path, ready: torch.Tensor) -> None:
    """The floor row: read, decode and resize `path` as `Predictor.classify` does, then the
    engine's bare call on a ready tensor."""
    data = path.read_bytes()
    with one_torch_thread():
        predictor.preset.resize(decode_rgb(data))
    predictor.engine(ready)


def single_image_rows(
    weights: Path, images: dict[str, Path], repeats: int, rounds: int
) -> list[tuple]:
    """(path name, input, median ms, p95 ms) for the bare engines and the full paths."""
    ready = torch.randn(1, 3, IMG_SIZE, IMG_SIZE)
    naive = naive_torch(weights)
    predictors = {
        backend: load_predictor(weights, backend)
        for backend in ("onnxruntime", "torchscript", "torch")
    }
    onnx = predictors["onnxruntime"]
    # The ONNX Runtime rows first and together in every round, as a single-image service runs:
    # the torch engines' OpenMP threads and working sets then never sit between them.
    calls: dict[tuple[str, str], Callable[[], object]] = {
        ("bare onnxruntime", "tensor"): lambda: onnx.engine(ready)
    }
    # The other settings measured for one image: 1 thread, and the batch session's.
    for threads, name in ((1, "1 thread"), (0, "1 per core, no spinning (batches)")):
        session = OnnxRuntimeEngine.new_session(str(weights.with_suffix(".onnx")), threads=threads)
        calls[(f"bare onnxruntime: {name}", "tensor")] = lambda s=session: ort_run(s, ready)
    for size, path in images.items():
        calls[("floor onnxruntime", size)] = lambda path=path: fixed_steps_then_bare(
            onnx, path, ready
        )
        calls[("full onnxruntime", size)] = lambda path=path: onnx.classify(path)
    for backend in ("torchscript", "torch"):
        calls[(f"bare {backend}", "tensor")] = lambda p=predictors[backend]: p.engine(ready)
    for size, path in images.items():
        for backend in ("torchscript", "torch"):
            predictor = predictors[backend]
            calls[(f"full {backend}", size)] = lambda p=predictor, path=path: p.classify(path)
        calls[("naive torch", size)] = lambda path=path: naive(path)
    times = timed_rounds(calls, repeats, rounds)
    rows = [(name, size, *np.percentile(times[(name, size)], [50, 95])) for name, size in calls]
    return rows


def batch_rows(weights: Path, batch: int, repeats: int) -> list[tuple[str, float]]:
    """(path name, images per second) for batched engine calls and the whole folder path."""
    rows = []
    ready = torch.randn(batch, 3, IMG_SIZE, IMG_SIZE)
    for backend in ("onnxruntime", "torchscript", "torch"):
        predictor = load_predictor(weights, backend)
        times = timed(lambda p=predictor: p.engine(ready), repeats, warmup=2)
        rows.append((f"bare {backend}, batch {batch}", batch / np.median(times) * 1e3))
    items: list[Item] = expand_inputs([str(DEMO)])
    for backend in ("onnxruntime", "torch"):
        predictor = load_predictor(weights, backend)
        outcome = predict_items(predictor, items, batch_size=batch)
        rows.append(
            (
                f"--predict folder, {backend} ({len(items)} photos, workers + batch {batch})",
                len(items) / outcome.seconds,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--repeats", type=int, default=100, help="timed single-image calls")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of those")
    parser.add_argument("--batch", type=int, default=32, help="images per batched call")
    parser.add_argument("--batch-repeats", type=int, default=10, help="timed batched calls")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"onnxruntime {__import__('onnxruntime').__version__}, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = photos(folder)
        for arch in args.arch:
            weights = write_weights(arch, folder)
            rows = single_image_rows(weights, images, args.repeats, args.rounds)
            ceiling = min(m for name, _, m, _ in rows if name.startswith("bare onnxruntime"))
            print(
                f"\n{arch} at {IMG_SIZE} px, single image (ms, {args.repeats} calls in "
                f"{args.rounds} interleaved rounds)"
            )
            print("| path | input | median | p95 | x best bare ORT |")
            print("| --- | --- | ---: | ---: | ---: |")
            for name, size, median, p95 in rows:
                print(f"| {name} | {size} | {median:.2f} | {p95:.2f} | {median / ceiling:.2f} |")
            full = {(name, size): median for name, size, median, _ in rows}
            for size in images:
                ratio = full[("full onnxruntime", size)] / ceiling
                floor = full[("floor onnxruntime", size)] / ceiling
                naive = full[("naive torch", size)] / full[("full onnxruntime", size)]
                verdict = "meets" if ratio <= GOAL else "misses"
                print(
                    f"full path, ONNX Runtime, {size} photo: {ratio:.2f}x the best bare ORT call "
                    f"({ceiling:.2f} ms; {verdict} the {GOAL}x goal; its fixed steps alone "
                    f"{floor:.2f}x); naive torch is {naive:.2f}x slower"
                )
            print(f"\n{arch} at {IMG_SIZE} px, throughput (images/s)")
            print("| path | images/s |")
            print("| --- | ---: |")
            for name, rate in batch_rows(weights, args.batch, args.batch_repeats):
                print(f"| {name} | {rate:.1f} |")


if __name__ == "__main__":
    main()
