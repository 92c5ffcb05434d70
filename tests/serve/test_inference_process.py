"""The inference process on a real model: the service's answers come from it, and an image that
kills it or hangs it is refused with the downloader's reason while its neighbours are answered."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import time

import numpy as np
import pytest

from imgclf.model.predictor import load_predictor
from imgclf.serve import service as service_module
from imgclf.serve.inference_process import PROBABILITIES, EngineSpec, InferenceProcess
from imgclf.serve.service import ImageInput, Service
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


async def _until(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def test_a_replacement_that_cannot_start_makes_the_service_unready_until_one_does(
    mobilenet_weights, tmp_path, monkeypatch
):
    """The child is killed (as the OOM killer would) while its weights file is gone: the batch
    fails, the service says why it is not ready, and once the file is back a later attempt
    starts a fresh child and the service answers again."""
    weights = tmp_path / "model.pth"
    shutil.copy(mobilenet_weights, weights)
    monkeypatch.setattr(service_module, "RESTART_RETRY_S", 0.2)
    settings = ServiceSettings(
        weights=str(weights), inference_processes=1, engine_threads=1, max_batch_size=2
    )
    image = [ImageInput("photo.jpg", jpeg_bytes((40, 30)))]

    async def scenario():
        service = Service(settings, load_predictor(weights))
        await service.start()
        try:
            await _until(lambda: service.state.ready)
            before = await service.predict(image, 1)
            hidden = weights.rename(tmp_path / "moved.pth")
            os.kill(service.inference[0].pid, signal.SIGKILL)
            with pytest.raises(RuntimeError, match="did not start"):
                await service.predict(image, 1)
            reason = service.state.not_ready_reason()
            ready_meanwhile = service.state.ready
            hidden.rename(weights)
            await _until(lambda: service.state.ready)
            after = await service.predict(image, 1)
            return before, reason, ready_meanwhile, after
        finally:
            await service.stop()

    try:
        before, reason, ready_meanwhile, after = asyncio.run(scenario())
    finally:  # the service froze this process's objects out of the collector at its warm-up
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
    assert not ready_meanwhile
    assert reason.startswith("an inference process died and could not be replaced (")
    assert "could not load the model" in reason
    assert before.status == after.status == 200
    assert after.payload["results"][0]["top"] == before.payload["results"][0]["top"]
