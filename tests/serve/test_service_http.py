"""The HTTP service end to end: one real `utils/serve.py` process for this module (uvicorn on a
free loopback port), a real HTTP client, every endpoint and every error status.

The service runs a mobilenet_v3_small whose head is fitted on the tiny generated shapes
(tests/support/trained.py), with small limits so that each refusal is cheap to provoke:
at most 4 images per request, 4 requests in progress, a 2 MB body cap; and /search over an
index of the tiny folder built with the same weights before the service starts.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imgclf.commands import search as search_command
from imgclf.model.weights import load_weights
from tests.conftest import DEMO_DATA, ROOT
from tests.serve.service_fixtures import (
    HOST,
    ServiceProcess,
    jpeg_bytes,
    metric,
    upload,
    wait_for,
)

MAX_IMAGES = 4
MAX_QUEUE = 4
BODY_CAP = 2_000_000


@pytest.fixture(scope="module")
def search_index(mobilenet_weights, tiny_root, tmp_path_factory) -> Path:
    """`utils/search.py build` of the tiny folder with the service's weights."""
    index = tmp_path_factory.mktemp("search") / "index"
    arguments = ["build", "--weights", str(mobilenet_weights), "--data", str(tiny_root)]
    assert search_command.main([*arguments, "--index", str(index), "--workers", "0"]) == 0
    return index


@pytest.fixture(scope="module")
def service(mobilenet_weights, search_index):
    """The service every test of this module talks to."""
    with ServiceProcess(
        mobilenet_weights,
        "--index",
        str(search_index),
        "--max-images",
        str(MAX_IMAGES),
        "--max-queue",
        str(MAX_QUEUE),
        "--max-body-bytes",
        str(BODY_CAP),
        "--max-batch-size",
        "8",
        "--log-json",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service.url(""), timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def photos(tiny_root) -> list[Path]:
    """Two tiny generated JPEGs and two real 100x100 demo photos."""
    tiny = sorted(tiny_root.glob("*/*.jpg"))
    return [tiny[0], tiny[-1], *sorted(DEMO_DATA.glob("*/*.jpg"))[:2]]


def _cli_results(script: str, *args: str) -> list[dict]:
    """The `results` of `python utils/<script> ARGS` (a --json command), run from the checkout."""
    cli = subprocess.run(
        [sys.executable, str(ROOT / "utils" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(cli.stdout)["results"]


def test_predict_answers_exactly_like_the_cli(client, photos, mobilenet_weights):
    """Same classes in the same order and the same probabilities (to 1e-6) as
    `utils/inference.py --predict --json`, for one request holding several images."""
    expected = _cli_results(
        "inference.py",
        "--weights",
        str(mobilenet_weights),
        "--predict",
        *map(str, photos),
        "--json",
        "--topk",
        "3",
    )
    answer = client.post(
        "/predict?topk=3", files=upload(*((path.name, path.read_bytes()) for path in photos))
    )
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert payload["arch"] == "mobilenet_v3_small"
    assert payload["weights_sha256"] == hashlib.sha256(mobilenet_weights.read_bytes()).hexdigest()
    assert payload["images"] == len(photos) and payload["failed"] == 0
    assert payload["tta"] is load_weights(mobilenet_weights).tta  # the CLI's default too
    assert [result["input"] for result in payload["results"]] == [path.name for path in photos]
    for served, printed in zip(payload["results"], expected, strict=True):
        assert [entry["class"] for entry in served["top"]] == [
            entry["class"] for entry in printed["top"]
        ]
        np.testing.assert_allclose(
            [entry["probability"] for entry in served["top"]],
            [entry["probability"] for entry in printed["top"]],
            atol=1e-6,
            rtol=0,
        )


def test_one_bad_image_does_not_fail_the_others(client, photos):
    good = photos[2].read_bytes()
    alone = client.post("/predict", files=upload(("good.jpg", good))).json()["results"][0]
    answer = client.post(
        "/predict",
        files=upload(
            ("good.jpg", good), ("notes.txt", b"just text"), ("cut.jpg", good[: len(good) // 2])
        ),
    )
    assert answer.status_code == 200
    payload = answer.json()
    assert payload["failed"] == 2
    first, text, cut = payload["results"]
    assert first["top"] == alone["top"]
    assert text["reason"] == "not_image" and text["error"].startswith("not_image: ")
    assert cut["reason"] == "corrupt"


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("page.html", lambda: b"<html><body>not a photo</body></html>", "not_image"),
        ("photo.ppm", lambda: _encoded("PPM"), "unsupported_format"),
    ],
)
def test_not_an_image_we_read_is_415_with_the_downloaders_reason(client, name, make, reason):
    answer = client.post("/predict", files=upload((name, make())))
    assert answer.status_code == 415
    assert answer.json()["results"][0]["reason"] == reason


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty"), (jpeg_bytes((64, 64))[:300], "corrupt")],
    ids=["empty", "truncated"],
)
def test_a_broken_image_is_422_with_the_downloaders_reason(client, data, reason):
    answer = client.post("/predict", files=upload(("broken.jpg", data)))
    assert answer.status_code == 422
    assert answer.json()["results"][0]["reason"] == reason


def test_too_many_images_is_422_saying_the_limit(client):
    image = jpeg_bytes((40, 40))
    answer = client.post("/predict", files=upload(*[("a.jpg", image)] * (MAX_IMAGES + 1)))
    assert answer.status_code == 422
    assert f"at most {MAX_IMAGES}" in answer.json()["detail"]


def test_request_without_images_or_of_another_type_is_refused(client):
    nothing = client.post("/predict", files={"photo": ("a.jpg", jpeg_bytes((40, 40)))})
    assert nothing.status_code == 422
    assert "named 'file'" in nothing.json()["detail"]
    bad_topk = client.post("/predict?topk=0", files=upload(("a.jpg", jpeg_bytes((40, 40)))))
    assert bad_topk.status_code == 422
    assert bad_topk.json()["detail"].startswith("topk: Input should be greater than")
    text = client.post("/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    assert "multipart/form-data" in text.json()["detail"]


def test_url_inputs_are_off_unless_allowed(client):
    answer = client.post("/predict", json={"urls": ["http://127.0.0.1:9/cat.jpg"]})
    assert answer.status_code == 403
    assert "--allow-urls" in answer.json()["detail"]


def test_body_over_the_cap_is_413_declared_or_streamed(client):
    too_big = b"\0" * (BODY_CAP + 1)
    declared = client.post("/predict", files=upload(("big.jpg", too_big)))
    assert declared.status_code == 413
    assert str(BODY_CAP) in declared.json()["detail"]

    def chunks():  # no Content-Length: the cap is found while streaming
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for _ in range(3):
            yield b"\0" * (BODY_CAP // 2)

    streamed = client.post(
        "/predict",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert streamed.status_code == 413


def test_full_queue_is_503_with_retry_after(client, service):
    """MAX_QUEUE uploads that never finish hold every slot; the next request is refused at
    once with Retry-After, and the service answers again when they go away."""
    stalled = []
    try:
        for _ in range(MAX_QUEUE):
            sock = socket.create_connection((HOST, service.port))
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            stalled.append(sock)
        wait_for(lambda: metric(client, "imgclf_requests_in_flight") == MAX_QUEUE)
        refused = client.post("/predict", files=upload(("a.jpg", jpeg_bytes((40, 40)))))
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert "queue is full" in refused.json()["detail"]
    finally:
        for sock in stalled:
            sock.close()
    wait_for(lambda: metric(client, "imgclf_requests_in_flight") == 0)
    again = client.post("/predict", files=upload(("a.jpg", jpeg_bytes((40, 40)))))
    assert again.status_code == 200


def test_request_past_its_deadline_is_504(client):
    """A 1 ms deadline for decoding two 1200x1200 photos cannot be met."""
    photo = jpeg_bytes((1200, 1200), (120, 80, 40))
    answer = client.post("/predict?timeout_ms=1", files=upload(("a.jpg", photo), ("b.jpg", photo)))
    assert answer.status_code == 504
    assert "deadline of 1 ms" in answer.json()["detail"]
    # The cancelled work left nothing behind: the next request is answered.
    assert client.post("/predict", files=upload(("a.jpg", photo))).status_code == 200


def test_search_answers_exactly_like_the_cli(
    client, photos, search_index, mobilenet_weights, tmp_path
):
    """The same neighbours (ids, paths, labels, scores), prototype and classifier class as
    `utils/search.py query ... --json`, for one request holding several images."""
    expected = _cli_results(
        "search.py",
        "query",
        *map(str, photos),
        "--index",
        str(search_index),
        "--k",
        "3",
        "--json",
        "--pictures",  # similar.png into the test's folder, not the checkout's pictures/
        str(tmp_path),
    )
    answer = client.post(
        "/search?k=3", files=upload(*((path.name, path.read_bytes()) for path in photos))
    )
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert payload["weights_sha256"] == hashlib.sha256(mobilenet_weights.read_bytes()).hexdigest()
    assert payload["gallery_items"] == 36 and payload["k"] == 3 and payload["failed"] == 0
    assert [result["input"] for result in payload["results"]] == [path.name for path in photos]
    for served, printed in zip(payload["results"], expected, strict=True):
        assert len(served["neighbours"]) == 3
        for key in ("rank", "id", "label", "path"):
            assert [n[key] for n in served["neighbours"]] == [
                n[key] for n in printed["neighbours"]
            ]
        np.testing.assert_allclose(
            [n["score"] for n in served["neighbours"]],
            [n["score"] for n in printed["neighbours"]],
            atol=2e-6,
            rtol=0,
        )
        assert served["prototype"]["class"] == printed["prototype"]["class"]
        assert served["prototype"]["score"] == pytest.approx(
            printed["prototype"]["score"], abs=2e-6
        )
        assert served["classifier"]["class"] == printed["classifier"]["class"]


@pytest.mark.parametrize("k", ["0", "-1", "1001"])
def test_search_k_out_of_bounds_is_422(client, photos, k):
    answer = client.post(f"/search?k={k}", files=upload(("a.jpg", photos[0].read_bytes())))
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("k: ")


def test_search_bad_image_is_a_per_image_error(client, photos):
    good = photos[2].read_bytes()
    alone = client.post("/search?k=2", files=upload(("good.jpg", good))).json()["results"][0]
    answer = client.post(
        "/search?k=2", files=upload(("good.jpg", good), ("notes.txt", b"just text"))
    )
    assert answer.status_code == 200
    payload = answer.json()
    assert payload["failed"] == 1
    first, text = payload["results"]
    assert first["neighbours"] == alone["neighbours"]
    assert text["reason"] == "not_image" and text["error"].startswith("not_image: ")
    only_bad = client.post("/search", files=upload(("notes.txt", b"just text")))
    assert only_bad.status_code == 415
    assert only_bad.json()["results"][0]["reason"] == "not_image"


def test_an_index_of_other_weights_is_refused_at_start(fitted_weights, search_index):
    started = subprocess.run(
        [
            sys.executable,
            str(ROOT / "utils" / "serve.py"),
            "--weights",
            str(fitted_weights),
            "--index",
            str(search_index),
            "--port",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 2
    assert "Traceback" not in started.stderr
    refusal = [line for line in started.stderr.splitlines() if "was built with" in line]
    assert len(refusal) == 1
    assert str(search_index) in refusal[0] and "python utils/search.py build" in refusal[0]


def test_health_and_info(client, mobilenet_weights, search_index):
    assert client.get("/health/live").json() == {"status": "alive"}
    assert client.get("/health/ready").json() == {"status": "ready"}
    info = client.get("/info").json()
    assert info["arch"] == "mobilenet_v3_small"
    assert info["classes"] == ["circle", "square", "triangle"]
    assert info["preprocessing"]["img_size"] == 64
    assert info["backend"] == "torch"
    assert info["tta"] is load_weights(mobilenet_weights).tta  # as the weights file says
    assert info["weights_sha256"] == hashlib.sha256(mobilenet_weights.read_bytes()).hexdigest()
    assert info["limits"]["max_images"] == MAX_IMAGES
    assert {"torch", "fastapi", "uvicorn", "uvloop", "httptools"} <= set(info["versions"])
    assert info["server"] == {"loop": "uvloop", "http": "httptools"}  # both pinned
    assert info["search"] is True
    assert info["search_index"] == {
        "path": str(search_index),
        "items": 36,
        "dim": info["search_index"]["dim"],
        "kind": "exact",
        "prototype_classes": ["circle", "square", "triangle"],
    }
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_batches_and_failures(client, photos):
    before_ok = metric(client, "imgclf_requests_total", endpoint="/predict", status="200")
    before_failed = metric(client, "imgclf_images_failed_total", reason="not_image")
    before_batched = metric(client, "imgclf_batch_size_sum")
    files = upload((photos[0].name, photos[0].read_bytes()), ("x.txt", b"text"))
    assert client.post("/predict", files=files).status_code == 200
    assert metric(client, "imgclf_requests_total", endpoint="/predict", status="200") == (
        before_ok + 1
    )
    assert metric(client, "imgclf_images_failed_total", reason="not_image") == before_failed + 1
    # Both images went to the inference processes (which refuse the text), in one batch or
    # in two (each process's share of the two in flight).
    assert metric(client, "imgclf_batch_size_sum") == before_batched + 2
    before_search = metric(client, "imgclf_requests_total", endpoint="/search", status="200")
    assert client.post("/search", files=files).status_code == 200
    assert metric(client, "imgclf_requests_total", endpoint="/search", status="200") == (
        before_search + 1
    )
    assert metric(client, "imgclf_images_failed_total", reason="not_image") == before_failed + 2
    text = client.get("/metrics").text
    for name in (
        "imgclf_request_duration_seconds_bucket",
        "imgclf_queue_depth",
        "imgclf_batch_duration_seconds_count",
    ):
        assert name in text


def test_one_json_log_line_per_request(client, service):
    """The line is written once the answer is sent, so wait for the last one; lines of the
    earlier tests' last requests may land after `before`."""
    before = len(service.log_lines())
    client.get("/health/live")
    client.post("/predict", files=upload(("x.txt", b"text")))
    client.get("/nowhere")
    wait_for(lambda: any('"/nowhere"' in line for line in service.log_lines()[before:]))
    lines = [json.loads(line) for line in service.log_lines()[before:] if line.startswith("{")]
    ours = [line for line in lines if line["path"] != "/metrics"]
    assert [(line["method"], line["path"], line["status"]) for line in ours] == [
        ("GET", "/health/live", 200),
        ("POST", "/predict", 415),
        ("GET", "/nowhere", 404),
    ]
    assert all(line["ms"] >= 0 and line["client"] == HOST for line in ours)


def test_no_response_ever_holds_a_traceback(client):
    """Malformed bodies of every kind are answered with a sentence."""
    bodies = [
        (b"--xyz\r\nbroken", "multipart/form-data; boundary=xyz"),
        (b"\xff\xfe", "multipart/form-data"),
        (b"{not json", "application/json"),
    ]
    for body, content_type in bodies:
        answer = client.post("/predict", content=body, headers={"Content-Type": content_type})
        assert 400 <= answer.status_code < 500, answer.text
        assert "Traceback" not in answer.text and "detail" in answer.json()


def test_openapi_schema_fuzzing_finds_no_failure(service, tmp_path):
    """schemathesis against /openapi.json, a bounded number of cases per operation, loopback
    only: no 5xx, every status and body as documented.

    The request's own deadline is pinned to the server's: a fuzzed `timeout_ms=1` is
    answered with the documented 504, which the no-server-error check would count."""
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"query.timeout_ms" = 10000\n')
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(config),
            "run",
            service.url("/openapi.json"),
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--workers",
            "1",
            "--checks",
            "all",
            # Arbitrary bytes are valid `format: binary` strings, but not images: their 415 /
            # 422 is the documented answer, which this check would count as a rejection.
            "--exclude-checks",
            "positive_data_acceptance",
            "--generation-database",
            "none",
            "--report-dir",
            str(tmp_path),
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_documented_curl_commands(service, photos):
    """docs/serve.md's `curl -F file=@photo.jpg .../predict` and `.../search?k=5`, as written."""
    predicted = subprocess.run(
        ["curl", "-s", "-F", f"file=@{photos[2]}", service.url("/predict")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(predicted.stdout)["results"][0]["input"] == photos[2].name
    searched = subprocess.run(
        ["curl", "-s", "-F", f"file=@{photos[2]}", service.url("/search?k=5")],
        capture_output=True,
        text=True,
        check=True,
    )
    neighbours = json.loads(searched.stdout)["results"][0]["neighbours"]
    assert [n["rank"] for n in neighbours] == [1, 2, 3, 4, 5]
    assert {n["label"] for n in neighbours} <= {"circle", "square", "triangle"}
