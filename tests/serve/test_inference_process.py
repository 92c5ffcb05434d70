"""The inference process on a real model: the service's answers come from it, and an image that
kills it or hangs it is refused with the downloader's reason while its neighbours are answered."""

from __future__ import annotations

import numpy as np

from imgclf.model.predictor import load_predictor
from imgclf.serve.inference_process import PROBABILITIES, EngineSpec, InferenceProcess
from imgclf.serve.settings import ServiceSettings
from tests.serve.crashing import HANG, POISON, decode_or_misbehave
from tests.serve.service_fixtures import jpeg_bytes


def test_a_crash_or_a_hang_costs_only_its_own_image(mobilenet_weights):
    settings = ServiceSettings(
        weights=str(mobilenet_weights), engine_threads=1, max_batch_size=2, deadline_ms=1_000
    )
    spec = EngineSpec(settings, decode=decode_or_misbehave)
    restarts: list[str] = []
    child = InferenceProcess(spec, on_restart=restarts.append)
    child.start()
    try:
        small, large = jpeg_bytes((40, 30)), jpeg_bytes((90, 120))
        batch = [small, POISON, large, HANG, b"<html>not an image</html>"]
        results = child.run(PROBABILITIES, batch)
        after = child.run(PROBABILITIES, [large])  # the fresh child goes on serving
    finally:
        child.stop()
    assert [result.reason for result in results] == [
        "",
        "worker_crashed",
        "",
        "validate_timeout",
        "not_image",
    ]
    assert restarts == ["worker_crashed", "validate_timeout"] and child.restarts == 2
    # The rows are the model's own probabilities for those images, computed here directly.
    predictor = load_predictor(mobilenet_weights)
    for data, result in ((small, results[0]), (large, results[2]), (large, after[0])):
        np.testing.assert_allclose(result.row, predictor.classify(data), atol=1e-6)
        assert result.preprocess_ms > 0 and result.model_ms > 0
