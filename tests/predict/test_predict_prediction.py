"""`--predict` on files, folders and URLs from a real loopback server, with the failures that
must not stop the others: broken file, non-image, missing path, HTTP error, closed port."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from imgclf.decoding import decode_rgb
from imgclf.model.predictor import load_predictor
from imgclf.model.preprocessing import EvalPreset
from imgclf.predict.batches import ItemImages
from imgclf.predict.inputs import Item
from imgclf.predict.prediction import predict_paths
from tests.support.loopback import LoopbackServer, respond


def _closed_port_url() -> str:
    # Bind a free port, then close it: nothing listens there while the test runs.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/image.jpg"


def test_predict_files_folders_and_urls(cli, fitted_weights, tiny_root, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((tiny_root / "circle" / "009.jpg").read_bytes()[:300])
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    square = (tiny_root / "square" / "010.jpg").read_bytes()
    with LoopbackServer({"/square.jpg": respond(square)}) as server:
        code = cli.main(
            [
                "--weights",
                str(fitted_weights),
                "--predict",
                str(tiny_root / "circle" / "008.jpg"),
                str(broken),
                server.url("/square.jpg"),
                server.url("/gone.jpg"),
                _closed_port_url(),
                str(not_image),
                str(tmp_path / "missing.jpg"),
                str(tiny_root / "triangle"),
                "--json",
                "--workers",
                "0",
                "--allow-private-urls",  # the test server is on loopback
            ]
        )
        assert server.hits["/square.jpg"] == 1
    assert code == 1
    payload = json.loads(capsys.readouterr().out)
    results = payload["results"]
    # Every input has a row, in order; the folder expands to its 12 images, sorted.
    assert len(results) == 7 + 12
    assert results[0]["top"][0]["class"] == "circle"
    assert results[1]["error"].startswith("broken image")
    assert results[2]["top"][0]["class"] == "square"
    assert results[3]["error"] == "HTTP 404"
    assert results[4]["error"].startswith("unreachable")
    assert results[5]["error"] == "not an image (no image format recognised)"
    assert results[6]["error"] == "no such file, folder or http(s) URL"
    folder = results[7:]
    assert [row["input"] for row in folder] == [
        str(tiny_root / "triangle" / f"{index:03d}.jpg") for index in range(12)
    ]
    # The fitted model gets the held-out triangles (8..11) right.
    assert all(row["top"][0]["class"] == "triangle" for row in folder[8:])
    assert payload["failed"] == 5
    assert payload["images"] == 19
    top = results[0]["top"]
    assert len(top) == 3  # --topk 5, capped at the three classes
    assert sum(entry["probability"] for entry in top) == pytest.approx(1.0)
    assert set(results[0]["latency_ms"]) == {"read", "preprocess", "model"}
    assert set(payload["latency"]) == {"per_image_ms", "preprocess_ms", "model_ms"}


def test_predict_text_output(cli, fitted_weights, tiny_root, capsys):
    image = tiny_root / "square" / "011.jpg"
    assert (
        cli.main(["--weights", str(fitted_weights), "--predict", str(image), "--topk", "2"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(image))
    assert lines[0].split()[1] == "square"
    assert len(lines[0].split()) == 1 + 2 * 2  # path, then two (class, probability) pairs
    assert lines[-2] == f"1 of 1 images classified ({fitted_weights}, backend torch)"
    assert lines[-1].startswith("latency per image after warm-up: median ")


def test_loader_workers_and_batches_give_the_same_answers(fitted_weights, tiny_root):
    folder = [str(tiny_root)]
    inline = predict_paths(fitted_weights, folder, batch_size=32, workers=0).payload["results"]
    parallel = predict_paths(fitted_weights, folder, batch_size=5, workers=2).payload["results"]
    assert [row["input"] for row in inline] == [row["input"] for row in parallel]
    for a, b in zip(inline, parallel, strict=True):
        probs_a = [entry["probability"] for entry in a["top"]]
        probs_b = [entry["probability"] for entry in b["top"]]
        assert [e["class"] for e in a["top"]] == [e["class"] for e in b["top"]]
        np.testing.assert_allclose(probs_a, probs_b, atol=1e-5)


def test_empty_folder_is_a_failed_item(cli, fitted_weights, tiny_root, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main(
        [
            "--weights",
            str(fitted_weights),
            "--predict",
            str(tmp_path / "empty"),
            str(tiny_root / "circle" / "000.jpg"),
        ]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "empty  error: folder has no images" in out
    assert "1 of 2 images classified, 1 failed" in out


def test_classify_one_image_matches_the_batched_path(fitted_weights, tiny_root):
    image = tiny_root / "triangle" / "009.jpg"
    probabilities = load_predictor(fitted_weights).classify(image)
    batched = predict_paths(fitted_weights, [str(image)], workers=0).payload["results"][0]["top"]
    assert probabilities.argmax() == 2  # circle, square, triangle
    assert probabilities.max() == pytest.approx(batched[0]["probability"], abs=1e-6)


def test_warm_up_decodes_and_preprocesses_a_real_jpeg(fitted_weights):
    seen = []

    class RecordingPreset(EvalPreset):
        def batch(self, images, out=None):
            seen.append([(tuple(image.shape), image.dtype) for image in images])
            return super().batch(images, out)

    ItemImages([], RecordingPreset(load_predictor(fitted_weights).spec.preprocessing)).warm_up(2)
    assert seen == [[((3, 48, 64), torch.uint8)]] * 2


def test_a_loader_batch_is_the_per_image_preprocessing_with_failures_listed(
    fitted_weights, tiny_root, tmp_path
):
    """ItemImages' batch path gives bit for bit the tensors of decode_rgb + the eval preset,
    one image at a time (what Predictor.classify and the service compute)."""
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = sorted(tiny_root.rglob("*.jpg"))[:7]
    items = [Item(str(path)) for path in paths[:3]]
    items += [Item(str(tmp_path / "missing.jpg")), Item(str(tmp_path / "broken.jpg"))]
    items += [Item("x", error="given reason")] + [Item(str(path)) for path in paths[3:]]
    preset = load_predictor(fitted_weights).preset
    batch = ItemImages(items, preset).__getitems__(range(len(items)))
    assert batch.size == len(items) and batch.indices == [0, 1, 2, 6, 7, 8, 9]
    assert set(batch.errors) == {3, 4, 5} and batch.errors[5] == "given reason"
    assert batch.errors[4].startswith("broken image")
    expected = torch.stack([preset(decode_rgb(path.read_bytes())) for path in paths])
    assert torch.equal(batch.tensor, expected)
    assert all(batch.preprocess_ms[i] > 0 for i in batch.indices)
