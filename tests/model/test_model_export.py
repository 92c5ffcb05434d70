"""Export to ONNX and TorchScript: logits match eager torch on real photos (< 1e-4), the class
names and preprocessing travel inside the file, and a stale export is never used."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from imgclf.errors import InputError
from imgclf.imaging import open_rgb
from imgclf.model.export import export_model
from imgclf.model.predictor import load_predictor
from imgclf.model.spec import ModelSpec, file_sha256
from imgclf.model.weights import load_weights, save_weights
from tests.conftest import DEMO_DATA

PARITY = 1e-4


@pytest.fixture(scope="module")
def photos() -> list:
    """Eight real photos from the bundled demo data (two each of four classes)."""
    paths = [path for label in "0369" for path in sorted((DEMO_DATA / label).glob("*.jpg"))[:2]]
    return [open_rgb(path) for path in paths]


@pytest.fixture(scope="module", params=["mobilenet_v3_small", "resnet18"])
def exported(request, tmp_path_factory, mobilenet_weights, fitted_weights):
    """A copy of the weights with both exports written next to it."""
    source = mobilenet_weights if request.param == "mobilenet_v3_small" else fitted_weights
    folder = tmp_path_factory.mktemp(f"export_{request.param}")
    weights = shutil.copy(source, folder / source.name)
    paths = {fmt: export_model(weights, fmt)[0] for fmt in ("onnx", "torchscript")}
    return weights, paths


def _logits(predictor, batch: torch.Tensor) -> np.ndarray:
    return predictor.engine(batch)


def test_exports_match_eager_torch_on_real_photos(exported, photos):
    weights, paths = exported
    assert paths["onnx"] == weights.with_suffix(".onnx")
    assert paths["torchscript"] == weights.with_suffix(".ts")
    assert not weights.with_suffix(".onnx.data").exists()  # one self-contained file
    eager = load_predictor(weights, "torch")
    batch = torch.stack([eager.preprocess(photo) for photo in photos])
    reference = _logits(eager, batch)
    assert np.abs(reference).max() > 1  # a fitted head: real logits, not near-zero noise
    for backend, path in (("onnxruntime", paths["onnx"]), ("torchscript", paths["torchscript"])):
        predictor = load_predictor(path)
        assert predictor.backend == backend
        assert np.abs(_logits(predictor, batch) - reference).max() < PARITY
        # Dynamic batch axis: one image at a time gives the same logits.
        single = _logits(predictor, batch[:1])
        assert np.abs(single - reference[:1]).max() < PARITY


def test_spec_travels_inside_the_exported_files(exported):
    weights, paths = exported
    expected = ModelSpec.from_weights(load_weights(weights), source_sha256=file_sha256(weights))
    for path in paths.values():
        spec = load_predictor(path).spec
        assert spec == expected
        assert spec.classes == ("circle", "square", "triangle")


def test_fresh_export_is_reused_and_a_stale_one_is_not(exported, capsys):
    weights, paths = exported
    predictor = load_predictor(weights, "onnxruntime")
    assert predictor.source == str(paths["onnx"])
    assert capsys.readouterr().err == ""
    # Retrained weights (same path, other bytes): the export beside them is now stale.
    retrained = load_weights(weights)
    retrained.created = "2030-01-01T00:00:00+00:00"
    save_weights(weights, retrained)
    predictor = load_predictor(weights, "torchscript")
    assert predictor.source == str(weights)
    assert "exporting in memory" in capsys.readouterr().err
    assert predictor.spec.source_sha256 == file_sha256(weights)


def test_exported_file_runs_only_on_its_own_backend(exported):
    _, paths = exported
    with pytest.raises(InputError, match="can only run with --backend onnxruntime"):
        load_predictor(paths["onnx"], "torch")


def test_foreign_onnx_file_is_refused(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match="is not an ONNX model exported by imgclf"):
        load_predictor(fake)


def test_cli_export_and_predict_with_the_export(cli, fitted_weights, tiny_root, tmp_path, capsys):
    weights = shutil.copy(fitted_weights, tmp_path / fitted_weights.name)
    assert cli.main(["--weights", str(weights), "--export", "torchscript"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {weights.with_suffix('.ts')}")
    image = tiny_root / "circle" / "010.jpg"
    code = cli.main(["--weights", str(weights.with_suffix(".ts")), "--predict", str(image)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.split()[1] == "circle"
    assert "backend torchscript" in out


def test_onnxruntime_runs_single_images_on_their_own_session(exported):
    _, paths = exported
    predictor = load_predictor(paths["onnx"])
    engine = predictor.engine
    size = predictor.spec.preprocessing.img_size
    batch = torch.randn(2, 3, size, size)
    logits = engine(batch)
    single = engine(batch[:1])
    chosen = engine.single_image_session()
    assert chosen is not engine.session
    assert (
        chosen.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        == "1"
    )
    assert (
        engine.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning"
        )
        == "0"
    )
    assert engine.single_image_session() is chosen  # created once
    assert np.abs(single - logits[:1]).max() < PARITY


def test_exports_answer_the_embedding_of_eager_torch_as_a_second_output(exported, photos):
    weights, paths = exported
    eager = load_predictor(weights, "torch")
    batch = torch.stack([eager.preprocess(photo) for photo in photos])
    logits, embedding = eager.embed(batch)
    np.testing.assert_array_equal(logits, eager.engine(batch))  # the first output: logits
    arch = load_weights(weights).arch
    assert embedding.shape == (8, 1024 if arch == "mobilenet_v3_small" else 512)
    # What the head reads: applying the head to the embedding gives the logits.
    head = load_predictor(weights, "torch").engine.model.head
    np.testing.assert_allclose(
        head(torch.from_numpy(embedding)).detach().numpy(), logits, atol=PARITY
    )
    for path in paths.values():
        other_logits, other_embedding = load_predictor(path).embed(batch)
        assert np.abs(other_logits - logits).max() < PARITY
        assert np.abs(other_embedding - embedding).max() < PARITY
        single = load_predictor(path).embed(batch[:1])[1]
        assert np.abs(single - embedding[:1]).max() < PARITY


def test_a_logits_only_export_still_classifies_and_asks_for_a_new_export(fitted_weights, tmp_path):
    from imgclf.model.export import TORCHSCRIPT_SPEC_FILE, quiet_torchscript

    weights = load_weights(fitted_weights)
    spec = ModelSpec.from_weights(weights, source_sha256=file_sha256(fitted_weights))
    size = spec.preprocessing.img_size
    with quiet_torchscript(), torch.no_grad():  # how files were exported before embeddings
        traced = torch.jit.freeze(
            torch.jit.trace(weights.build_model(), torch.zeros(1, 3, size, size))
        )
        torch.jit.save(
            traced, str(tmp_path / "old.ts"), _extra_files={TORCHSCRIPT_SPEC_FILE: spec.to_json()}
        )
    old = load_predictor(tmp_path / "old.ts")
    batch = torch.rand(2, 3, size, size)
    reference = load_predictor(fitted_weights).engine(batch)
    assert np.abs(old.engine(batch) - reference).max() < PARITY
    with pytest.raises(InputError, match=r"no embedding output .* --export torchscript"):
        old.embed(batch)


def test_tta_averages_each_image_with_its_mirror_on_every_engine(exported, photos):
    weights, paths = exported
    eager = load_predictor(weights, "torch")
    batch = torch.stack([eager.preprocess(photo) for photo in photos])
    plain = eager.probabilities(batch)
    mirrored = eager.probabilities(batch.flip(-1))
    expected = (plain + mirrored) / 2
    assert np.abs(plain - mirrored).max() > 1e-3  # the mirror really is another input
    for source in (weights, paths["onnx"], paths["torchscript"]):
        predictor = load_predictor(source, tta=True)
        assert predictor.tta
        assert np.abs(predictor.probabilities(batch) - expected).max() < PARITY


def test_the_weights_file_decides_tta_unless_told(fitted_weights, tmp_path):
    weights = load_weights(fitted_weights)
    weights.tta = True  # as export.tta: auto writes it after training with flips
    path = save_weights(tmp_path / "flipped.pth", weights)
    sources = [path, *(export_model(path, fmt)[0] for fmt in ("onnx", "torchscript"))]
    for source in sources:
        assert load_predictor(source).tta, source
        assert not load_predictor(source, tta=False).tta, source
    assert not load_predictor(fitted_weights).tta  # written without it: off
    # A spec written before specs carried the key reads as off.
    legacy = json.loads(load_predictor(sources[1]).spec.to_json())
    del legacy["tta"]
    assert ModelSpec.from_json(json.dumps(legacy)).tta is False
