"""`python utils/inference.py --predict PATH ...`: top-k classes per image, with latency.

Latency is measured on the real run, after untimed warm-up calls of the model and of decoding +
preprocessing (in each loader worker): per image, the decode + preprocess time in its loader
worker and its share of its batch's model call (with batch size 1, exactly that image's model
call). Reading the file or URL is reported apart (`read_ms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.model.predictor import Predictor, load_predictor
from imgclf.predict.batches import DEFAULT_BATCH_SIZE, Outcome, predict_items
from imgclf.predict.inputs import expand_inputs


@dataclass
class PredictionResult:
    """Per-item results as a JSON-ready dict, and how many items failed."""

    payload: dict[str, Any]
    failed: int


def _latency(values: np.ndarray) -> dict[str, float]:
    if len(values) == 1:  # one image (most HTTP requests): numpy's quantiles cost ~0.1 ms
        value = round(float(values[0]), 3)
        return {"median": value, "p95": value}
    return {
        "median": round(float(np.median(values)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
    }


def _payload(predictor: Predictor, sources: list[str], outcome: Outcome, topk: int) -> dict:
    classes = predictor.classes
    results: list[dict[str, Any]] = []
    for index, source in enumerate(sources):
        if index in outcome.errors:
            results.append({"input": source, "error": outcome.errors[index]})
            continue
        probs = outcome.probabilities[index]
        top = np.argsort(-probs, kind="stable")[:topk]
        results.append(
            {
                "input": source,
                "top": [{"class": classes[k], "probability": float(probs[k])} for k in top],
                "latency_ms": {
                    "read": round(float(outcome.read_ms[index]), 3),
                    "preprocess": round(float(outcome.preprocess_ms[index]), 3),
                    "model": round(float(outcome.model_ms[index]), 3),
                },
            }
        )
    ok = outcome.ok
    latency = {}
    if len(ok):
        full = outcome.preprocess_ms[ok] + outcome.model_ms[ok]
        latency = {
            "per_image_ms": _latency(full),
            "preprocess_ms": _latency(outcome.preprocess_ms[ok]),
            "model_ms": _latency(outcome.model_ms[ok]),
        }
    return {
        "model": predictor.source,
        "backend": predictor.backend,
        "tta": predictor.tta,
        "batch_size": outcome.batch_size,
        "images": len(sources),
        "failed": len(outcome.errors),
        "seconds": round(outcome.seconds, 3),
        "latency": latency,
        "results": results,
    }


def predict_paths(
    weights: str | Path,
    inputs: list[str],
    *,
    backend: str | None = None,
    topk: int = 5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    tta: bool | None = None,
    block_private: bool = True,
) -> PredictionResult:
    """Classify files, folders (recursively) and URLs; failed items are results with an error.

    `tta`: average each image with its mirror (None: as the weights file says).
    `block_private`: URLs may reach only globally routable addresses (the downloader's guard).
    """
    predictor = load_predictor(weights, backend, tta=tta)
    items = expand_inputs(inputs)
    outcome = predict_items(
        predictor,
        items,
        batch_size=batch_size,
        workers=workers,
        progress="predicting" if len(items) > batch_size else None,
        block_private=block_private,
    )
    topk = max(1, min(topk, len(predictor.classes)))
    payload = _payload(predictor, [item.source for item in items], outcome, topk)
    return PredictionResult(payload, len(outcome.errors))


def format_predictions(payload: dict[str, Any]) -> str:
    """One line per image (top-k with probabilities, or the error), then a latency summary."""
    results = payload["results"]
    width = min(60, max((len(result["input"]) for result in results), default=10))
    lines = []
    for result in results:
        name = result["input"]
        shown = name if len(name) <= width else "..." + name[-(width - 3) :]
        if "error" in result:
            lines.append(f"{shown:<{width}}  error: {result['error']}")
            continue
        top = "  ".join(f"{entry['class']} {entry['probability']:.3f}" for entry in result["top"])
        lines.append(f"{shown:<{width}}  {top}")
    latency = payload["latency"]
    done = payload["images"] - payload["failed"]
    summary = f"{done} of {payload['images']} images classified"
    if payload["failed"]:
        summary += f", {payload['failed']} failed"
    mirrored = ", mirror-averaged" if payload.get("tta") else ""
    summary += f" ({payload['model']}, backend {payload['backend']}{mirrored})"
    lines += ["", summary]
    if latency:
        per_image, pre, model = (
            latency["per_image_ms"],
            latency["preprocess_ms"],
            latency["model_ms"],
        )
        lines.append(
            f"latency per image after warm-up: median {per_image['median']:.1f} ms, "
            f"p95 {per_image['p95']:.1f} ms (decode+preprocess {pre['median']:.1f} ms, "
            f"model {model['median']:.1f} ms at batch size up to {payload['batch_size']})"
        )
    return "\n".join(lines)
