"""Search speed: the approximate index against exact search on a large synthetic gallery.

Usage (heavy: about 5 GB of memory at 576-d and minutes of CPU; run it alone):
    flock /tmp/imgclf-cpu.lock nice .venv/bin/python benchmarks/search.py
    flock /tmp/imgclf-cpu.lock nice .venv/bin/python benchmarks/search.py --dim 1024

Gallery: `--count` unit vectors of `--dim` dimensions (default 576, mobilenet_v3_small's pooled
features; the embedding the search uses is what the classifier head reads: 1,024-d for
mobilenet_v3_small, whose classifier is Linear(576, 1024) - Hardswish - Dropout - Linear, and
512-d for resnet18, whose fc reads the pooled features). Not uniform on the sphere (every
point about equally far from every other) and not well-separated clusters (there nprobe 1
already found 98% of the true neighbours): like real embeddings they have a low intrinsic
dimension (the demo model's 1,024-d embeddings keep 99% of each class's variance in 11-27
principal components), plus a little noise in every dimension. A latent vector of
`--intrinsic-dim` dimensions is drawn from `--clusters` overlapping Gaussian clusters
(`--between`: the share of the latent variance between the centres), mapped into `--dim`
dimensions by a random orthonormal basis, isotropic noise holding `--noise` of the variance is
added, and the result normalised. With the defaults nearest neighbours are less close than in
the real demo gallery (median cosine to the nearest other vector among 2,062 about 0.8,
against 0.999 for the demo photos, many near-duplicates), so this is the harder case for an
inverted file: a query's neighbours straddle several lists. Queries are fresh vectors from
the same distribution, not gallery members.

Rows: queries on one thread (faiss.omp_set_num_threads(1)), one at a time as a user sends
them; index builds and the nprobe calibration on all cores:
  exact @N        IndexFlatIP over the first N vectors: ms/query, to place the exact/approximate
                  threshold (imgclf.search.index.EXACT_MAX_ITEMS);
  approximate     the index the project builds above that threshold (choose_index, trained and
                  nprobe-calibrated by imgclf.search.index), ms/query and recall@10 against the
                  exact top 10 of the same queries;
  build time and memory: seconds to build each index (IVF: training, adding and the nprobe
  calibration) and the bytes its arrays hold (vectors; for IVF also ids and centroids).

`--part build` (or `all`): `python utils/search.py build` over a real image folder (default the
bundled digits), images/s, at the weights' own size and again at `--build-img-size` (224: the
same weights at another input size, where the model dominates), rows interleaved:
  ceiling         Predictor.embed on ready (batch, 3, S, S) tensors on all cores' torch
                  threads and on one; the faster is the ceiling (the bare batched model call);
  bare lanes      the same calls from one Python thread per core, one torch thread each (the
                  model part of the build's lanes: the most the model does on these cores);
  floor           the loader alone (ItemImages: read, decode, eval preset of the batch), no
                  model: in worker processes, and in-process on 1 thread (what one lane
                  spends loading) and on a thread per core (the GIL holds it near 1 thread);
  embed stream    embed_batches: lanes (the default), and 1 loader process beside the engine;
  build           the whole build from scratch into a fresh folder: listing and hashing the
                  files, the embed stream, FAISS, the atomic write; build / ceiling is the
                  target (>= 0.9);
  naive           what a user would write: PIL, torchvision's classic transforms, the model
                  per batch of the same size, in one process;
  estimate        1 / (1/ceiling + 1/floor): model and floor on the same cores with perfect
                  overlap at the ceiling's efficiency; and for lanes cores / (cores/bare lanes
                  + 1/floor on 1 thread): each image's model time in lanes plus its loading;
and each fixed step's microseconds per image on one core.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf.search.embedding import BUILD_BATCH_SIZE  # noqa: E402
from imgclf.search.index import (  # noqa: E402
    EXACT_MAX_ITEMS,
    as_unit_float32,
    build_faiss,
    calibrate_nprobe,
    choose_index,
    recall_at,
    set_nprobe,
)


def latent_vectors(
    count: int,
    dim: int,
    shape: tuple[int, int, float, float],
    seed: int,
    frame: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """`count` unit vectors of `dim` dimensions, made in chunks (see the module docstring).

    `shape` = (intrinsic dimension, clusters, share of the latent variance between cluster
    centres, share of the total variance that is isotropic noise); `frame` = (basis, centres)
    of an earlier call, so queries come from the gallery's distribution.
    """
    intrinsic, clusters, between, noise = shape
    rng = np.random.default_rng(seed)
    if frame is None:
        basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].T.astype(np.float32)
        centres = rng.standard_normal((clusters, intrinsic)).astype(np.float32) * np.sqrt(between)
        frame = (basis, centres)
    basis, centres = frame
    noise_std = np.sqrt(noise * intrinsic / (1 - noise) / dim)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 50_000):
        size = min(count, start + 50_000) - start
        latent = centres[rng.integers(0, clusters, size)]
        latent += rng.standard_normal((size, intrinsic), dtype=np.float32) * np.sqrt(1 - between)
        vectors = latent @ basis + rng.standard_normal((size, dim), dtype=np.float32) * noise_std
        out[start : start + size] = as_unit_float32(vectors)
    return out, frame


def neighbour_cosines(vectors: np.ndarray) -> str:
    """Median cosine to the 1st and 10th nearest other vector, and between random pairs."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -2)
    ranked = np.sort(scores, axis=1)[:, ::-1]
    pairs = scores[np.triu_indices(len(vectors), 1)]
    return (
        f"nearest {np.median(ranked[:, 0]):.3f}, 10th {np.median(ranked[:, 9]):.3f}, "
        f"random pair {np.median(pairs):.3f}"
    )


def ms_per_query(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Median ms of single-query searches, and the found rows (one warm-up query first)."""
    index.search(queries[:1], k)
    times, found = [], []
    for query in queries:
        tic = time.perf_counter()
        _, rows = index.search(query[None, :], k)
        times.append((time.perf_counter() - tic) * 1e3)
        found.append(rows[0])
    return float(np.median(times)), np.array(found)


def index_bytes(index: faiss.Index) -> int:
    """Bytes held by the index's arrays: the vectors, and for IVF the ids and the centroids."""
    if isinstance(index, faiss.IndexFlat):
        return index.ntotal * index.d * 4
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    stored = sum(lists.list_size(i) for i in range(lists.nlist))
    return stored * (lists.code_size + 8) + ivf.quantizer.ntotal * ivf.d * 4


def _rate(count: int, call) -> float:
    tic = time.perf_counter()
    call()
    return count / (time.perf_counter() - tic)


def stage_costs(predictor, paths: list[Path]) -> dict[str, float]:
    """Microseconds per image of each fixed step, on one torch thread, best of 3 passes."""
    import hashlib

    from imgclf.decoding import decode_rgb
    from imgclf.model.single_image import one_torch_thread

    datas = [path.read_bytes() for path in paths]
    pixels = [decode_rgb(data) for data in datas]
    steps = {
        "read file": lambda: [path.read_bytes() for path in paths],
        "sha256": lambda: [hashlib.sha256(data).hexdigest() for data in datas],
        "decode (imgclf.decoding)": lambda: [decode_rgb(data) for data in datas],
        "eval preset per image": lambda: [predictor.preset(p) for p in pixels],
        f"eval preset on batches of {BUILD_BATCH_SIZE} (EvalPreset.batch, the loader's)": lambda: [
            predictor.preset.batch(pixels[start : start + BUILD_BATCH_SIZE])
            for start in range(0, len(pixels), BUILD_BATCH_SIZE)
        ],
    }
    costs = {}
    with one_torch_thread():
        for name, call in steps.items():
            costs[name] = min(1e6 / _rate(len(paths), call) for _ in range(3))
    return costs


def naive_embed(weights: Path, paths: list[Path], batch: int) -> Callable[[], None]:
    """What a user would write: PIL, classic torchvision transforms, the model per batch
    under no_grad (the same two-output module, so the same features are computed)."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from imgclf.model.factory import with_embedding
    from imgclf.model.weights import load_weights

    loaded = load_weights(weights)
    model = with_embedding(loaded.build_model(), loaded.arch)
    size = loaded.preprocessing
    preprocess = transforms.Compose(
        [
            transforms.Resize(size.resize_size),
            transforms.CenterCrop(size.img_size),
            transforms.ToTensor(),
            transforms.Normalize(size.mean, size.std),
        ]
    )

    def run() -> None:
        for start in range(0, len(paths), batch):
            part = paths[start : start + batch]
            images = [preprocess(Image.open(path).convert("RGB")) for path in part]
            with torch.no_grad():
                torch.nn.functional.normalize(model(torch.stack(images))[1])

    return run


def at_img_size(weights: Path, img_size: int, folder: Path) -> Path:
    """The same trained weights with another input size (the network pools globally, so it
    runs at any size with realistic activations), for the row where the model dominates."""
    from dataclasses import replace

    from imgclf.model.preprocessing import Preprocessing
    from imgclf.model.weights import load_weights, save_weights

    loaded = load_weights(weights)
    path = folder / f"{loaded.arch}_{img_size}px.pth"
    save_weights(path, replace(loaded, preprocessing=Preprocessing.for_img_size(img_size)))
    return path


def build_rows(weights: Path, data: Path, batch: int, repeats: int) -> None:
    """Images/s of a whole build over `data` beside its ceiling, its floor and a naive loop."""
    import tempfile

    import torch

    from imgclf.dataset.samples import read_samples
    from imgclf.model.single_image import torch_threads
    from imgclf.predict.inputs import Item
    from imgclf.search.building import build
    from imgclf.search.embedding import EmbedderSettings, embed_batches
    from imgclf.search.model import load_search_model

    model = load_search_model(weights)
    predictor = model.predictor
    _, samples = read_samples(data)
    paths = [data / s.path for s in samples]
    items = [Item(str(path)) for path in paths]
    count = len(items)
    cores = os.cpu_count() or 1
    ready = torch.stack([predictor.preset(predictor_input) for predictor_input in _decoded(paths)])
    settings = EmbedderSettings(batch, None, None)

    def bare(engine_threads: int) -> Callable[[], None]:
        def run() -> None:
            with torch_threads(engine_threads):
                for start in range(0, count, batch):
                    predictor.embed(ready[start : start + batch])

        return run

    def bare_lanes(lanes: int) -> Callable[[], None]:
        from concurrent.futures import ThreadPoolExecutor

        def run() -> None:
            starts = range(0, count, batch)
            with torch_threads(1), ThreadPoolExecutor(lanes) as pool:
                for _ in pool.map(
                    lambda start: predictor.embed(ready[start : start + batch]), starts
                ):
                    pass

        return run

    def floor(loader_workers: int) -> Callable[[], None]:
        from imgclf.predict.batches import ItemImages, image_batches

        def run() -> None:
            for _ in image_batches(ItemImages(items, predictor.preset), batch, loader_workers):
                pass

        return run

    def threads_floor(decode_threads: int) -> Callable[[], None]:
        from concurrent.futures import ThreadPoolExecutor

        from imgclf.predict.batches import ItemImages

        dataset = ItemImages(items, predictor.preset)
        dataset.warm_up()

        def load(start: int):
            return dataset.__getitems__(range(start, min(start + batch, count)))

        def run() -> None:
            with torch_threads(1), ThreadPoolExecutor(decode_threads) as pool:
                for _ in pool.map(load, range(0, count, batch)):
                    pass

        return run

    def embed_only(workers: int | None) -> Callable[[], None]:
        def run() -> None:
            for _ in embed_batches(predictor, items, EmbedderSettings(batch, workers, None)):
                pass

        return run

    def whole_build() -> None:
        with tempfile.TemporaryDirectory() as folder:
            build(weights, data, Path(folder) / "index", settings=settings)

    rows = {
        f"ceiling: bare embed, ready tensors, {cores} torch threads": bare(cores),
        "bare embed, ready tensors, 1 torch thread": bare(1),
        f"bare embed in {cores} lanes (a thread per core, 1 torch thread each)": bare_lanes(cores),
        f"floor: loader only (read, decode, preset), {cores} worker processes": floor(cores),
        "floor: the same in-process, 1 thread (a lane's loading)": threads_floor(1),
        f"floor: the same in-process, {cores} threads": threads_floor(cores),
        f"embed stream, {cores} lanes (build's default)": embed_only(None),
        "embed stream, 1 loader process + engine on the other core(s)": embed_only(1),
        "imgclf build (whole command: listing + hashing, embed, FAISS, write)": whole_build,
        "naive: PIL + torchvision transforms + model per batch": naive_embed(
            weights, paths, batch
        ),
    }
    for size in sorted({1, batch, count % batch or batch}):
        predictor.warm_up(size)
    rates: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):  # interleaved, so a slow spell of the machine hits every row
        for name, call in rows.items():
            rates[name].append(_rate(count, call))
    size = predictor.spec.preprocessing.img_size
    print(
        f"\nbuild over {data} ({count} images, {model.info.arch} at {size} px, batch {batch}, "
        f"backend {predictor.backend}, {cores} cores); images/s, range and median of "
        f"{repeats} interleaved rounds:"
    )
    width = max(map(len, rows))
    # The ceiling: the faster of the two bare settings (on a busy machine two OpenMP threads
    # can be slower than one).
    ceiling = max(float(np.median(rates[name])) for name in list(rows)[:2])
    for name, values in rates.items():
        median = float(np.median(values))
        print(
            f"  {name:<{width}}  {min(values):7.0f}-{max(values):<7.0f} median {median:7.0f}"
            f"  {median / ceiling:5.2f}x"
        )
    names = list(rows)
    median_of = {name: float(np.median(values)) for name, values in rates.items()}
    lanes_rate, floor_all, floor_one = (median_of[names[i]] for i in (2, 3, 4))
    bound = 1 / (1 / ceiling + 1 / floor_all)
    # In lanes the cores share each image's model time (as measured in lanes) and its loading
    # (on one thread: a lane loads alone), with perfect overlap.
    lanes_bound = cores / (cores / lanes_rate + 1 / floor_one)
    built = median_of[next(n for n in names if n.startswith("imgclf build"))]
    print(
        f"  estimate: model and floor sharing the cores, 1 / (1/ceiling + 1/floor) = {bound:.0f} "
        f"images/s = {bound / ceiling:.2f}x ceiling; in lanes, cores / (cores/lanes + "
        f"1/floor on 1 thread) = {lanes_bound:.0f} = {lanes_bound / ceiling:.2f}x; build "
        f"reaches {built / lanes_bound:.2f}x of the lanes estimate"
    )
    print(
        f"  ratio build / ceiling: {built / ceiling:.2f} (target >= 0.9); build / bare lanes: "
        f"{built / lanes_rate:.2f}; build / naive: {built / median_of[names[-1]]:.2f}x"
    )
    costs = stage_costs(predictor, paths)
    print("  per image on one core (us): " + ", ".join(f"{k} {v:.0f}" for k, v in costs.items()))


def _decoded(paths: list[Path]):
    from imgclf.decoding import decode_rgb

    return (decode_rgb(path.read_bytes()) for path in paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("synthetic", "build", "all"), default="all")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights/mobilenet_v3_small.pth")
    parser.add_argument("--images", type=Path, default=ROOT / "data/demo/sign_language_digits")
    parser.add_argument("--batch", type=int, default=BUILD_BATCH_SIZE)
    parser.add_argument(
        "--build-img-size",
        type=int,
        nargs="*",
        default=[224],
        help="also build at these input sizes (the same weights; the model dominates at 224)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--intrinsic-dim", type=int, default=12)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--between", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.part in ("build", "all"):
        build_rows(args.weights, args.images, args.batch, args.repeats)
        for size in args.build_img_size:
            import tempfile

            with tempfile.TemporaryDirectory() as folder:
                resized = at_img_size(args.weights, size, Path(folder))
                build_rows(resized, args.images, args.batch, args.repeats)
    if args.part == "build":
        return
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"faiss {faiss.__version__}; builds on all cores, queries on one thread; "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    tic = time.perf_counter()
    shape = (args.intrinsic_dim, args.clusters, args.between, args.noise)
    gallery, frame = latent_vectors(args.count, args.dim, shape, args.seed)
    queries, _ = latent_vectors(args.queries, args.dim, shape, args.seed + 1, frame)
    print(
        f"gallery: {args.count:,} x {args.dim} float32 ({gallery.nbytes / 2**30:.2f} GiB), "
        f"intrinsic dimension {args.intrinsic_dim}, {args.clusters} clusters "
        f"(between-centre share {args.between}), noise share {args.noise}; "
        f"made in {time.perf_counter() - tic:.1f} s"
    )
    sample, _ = latent_vectors(2062, args.dim, shape, args.seed + 2, frame)
    print(f"cosines in 2,062 of these vectors (the demo's size): {neighbour_cosines(sample)}")
    rows = []
    exact_ms = {}
    for size in sorted(
        {s for s in (10_000, 50_000, EXACT_MAX_ITEMS, args.count) if s <= args.count}
    ):
        tic = time.perf_counter()
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(gallery[:size])
        built = time.perf_counter() - tic
        faiss.omp_set_num_threads(1)
        ms, _ = ms_per_query(flat, queries[: args.exact_queries], args.k)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        exact_ms[size] = ms
        print(f"exact @{size:,}: {ms:.2f} ms/query", flush=True)
        rows.append((f"exact @{size:,}", ms, None, built, index_bytes(flat)))
        del flat
    # The ground truth, batched and untimed; faiss.knn scans the array without copying it.
    _, truth = faiss.knn(queries, gallery, args.k, metric=faiss.METRIC_INNER_PRODUCT)
    print("exact ground truth done", flush=True)
    choice = choose_index(args.count, "approximate")
    tic = time.perf_counter()
    approx = build_faiss(gallery, choice, seed=args.seed)
    nprobe, calibrated = calibrate_nprobe(approx, gallery, k=args.k, seed=args.seed)
    built = time.perf_counter() - tic
    print(f"approximate index built in {built:.0f} s", flush=True)
    set_nprobe(approx, nprobe)
    faiss.omp_set_num_threads(1)
    ms, found = ms_per_query(approx, queries, args.k)
    recall = recall_at(found, truth)
    name = f"approximate {choice.factory} nprobe={nprobe}"
    rows.append((name, ms, recall, built, index_bytes(approx)))
    print(f"nprobe calibrated on the gallery's own vectors: {nprobe} (recall@10 {calibrated:.3f})")
    print()
    width = max(len(row[0]) for row in rows)
    print(
        f"{'index':<{width}}  {'ms/query':>9}  {'recall@10':>9}  {'build s':>8}  "
        f"{'memory MiB':>10}"
    )
    for label, ms_q, rec, seconds, size in rows:
        shown = "exact" if rec is None else f"{rec:.4f}"
        print(
            f"{label:<{width}}  {ms_q:>9.3f}  {shown:>9}  {seconds:>8.1f}  {size / 2**20:>10.0f}"
        )
    speedup = exact_ms[args.count] / ms
    print(
        f"\napproximate vs exact at {args.count:,}: {speedup:.1f}x fewer ms/query, "
        f"recall@10 {recall:.4f} (targets: >= 20x, >= 0.95)"
    )
    per_thousand = exact_ms[args.count] / (args.count / 1000)
    print(
        f"exact search costs {per_thousand:.3f} ms per 1,000 items per query; "
        f"threshold EXACT_MAX_ITEMS = {EXACT_MAX_ITEMS:,} -> "
        f"{exact_ms.get(EXACT_MAX_ITEMS, float('nan')):.1f} ms/query exact"
    )


if __name__ == "__main__":
    main()
