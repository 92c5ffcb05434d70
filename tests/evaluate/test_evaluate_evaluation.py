"""The report (`python utils/inference.py`): on the stored split, on --data, with every backend,
and each bad input ending in one clear line and exit code 2 (or 1 for an unreadable image)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, TINY_CLASSES
from tests.dataset.helpers import manifest_rows_for_folder, write_manifest
from tests.support.trained import tiny_split

PICTURES = ("confusion_matrix.png", "confusion_matrix_normalized.png", "errors.png")


def _report_args(weights, tmp_path, *extra: str) -> list[str]:
    return [
        "--weights",
        str(weights),
        "--out",
        str(tmp_path / "reports"),
        "--pictures",
        str(tmp_path / "pictures"),
        "--bootstrap",
        "200",
        "--seed",
        "0",
        "--workers",
        "0",
        *extra,
    ]


def _held_out_copy(tiny_root, target):
    """The tiny test split copied into `<target>/<label>/` folders."""
    for relative, _ in tiny_split(tiny_root)["test"]:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_root / relative, target / relative)
    return target


def test_report_on_the_stored_split(cli, fitted_weights, tmp_path, capsys):
    assert cli.main(_report_args(fitted_weights, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "the test split of" in out
    assert "12 images, 3 classes" in out
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["run"]["backend"] == "torch"
    assert metrics["run"]["failed"] == []
    assert metrics["items"] == 12
    for name in ("f1_macro", "accuracy", "balanced_accuracy", "roc_auc_macro"):
        assert set(metrics["metrics"][name]) == {"value", "ci_low", "ci_high"}
    assert metrics["metrics"]["accuracy"]["value"] == 1.0
    # Training counts are 8 per class: the random baseline expects 1/3 accuracy.
    assert metrics["baselines"]["random"]["exact"]["accuracy"] == pytest.approx(1 / 3)
    assert metrics["bootstrap"] == {"resamples": 200, "seed": 0, "confidence": 0.95}
    rows = list(csv.DictReader((tmp_path / "reports" / "predictions.csv").open()))
    assert len(rows) == 12
    assert all(row["true_label"] == row["predicted_label"] for row in rows)
    for name in PICTURES:
        with Image.open(tmp_path / "pictures" / name) as image:
            image.load()


def test_every_backend_gives_the_same_report(cli, fitted_weights, tmp_path, capsys):
    weights = shutil.copy(fitted_weights, tmp_path / fitted_weights.name)
    reports = {}
    for backend in ("torch", "torchscript", "onnxruntime"):
        assert cli.main(_report_args(weights, tmp_path / backend, "--backend", backend)) == 0
        reports[backend] = list(
            csv.DictReader((tmp_path / backend / "reports" / "predictions.csv").open())
        )
    assert "exporting in memory" in capsys.readouterr().err
    for backend in ("torchscript", "onnxruntime"):
        for a, b in zip(reports["torch"], reports[backend], strict=True):
            assert a["predicted_label"] == b["predicted_label"]
            assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-5)


def test_report_on_a_data_folder_with_a_corrupt_image(
    cli, fitted_weights, tiny_root, tmp_path, capsys
):
    data = _held_out_copy(tiny_root, tmp_path / "data")
    (data / "circle" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert cli.main(_report_args(fitted_weights, tmp_path, "--data", str(data))) == 1
    captured = capsys.readouterr()
    assert "error: circle/zz_broken.jpg: " in captured.err
    assert "1 image(s) could not be read" in captured.out
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["items"] == 12
    assert metrics["run"]["images"] == 13
    assert len(metrics["run"]["failed"]) == 1


def test_report_on_the_test_rows_of_a_manifest(cli, fitted_weights, tiny_root, tmp_path):
    data = _held_out_copy(tiny_root, tmp_path / "data")
    rows = manifest_rows_for_folder(data, test_every=3)  # 4 of the 12 images are split=test
    rows.append({"url": "http://127.0.0.1/x.jpg", "label": "circle", "status": "failed"})
    write_manifest(data, rows)
    args = _report_args(fitted_weights, tmp_path, "--data", str(data), "--split", "test")
    assert cli.main(args) == 0
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["items"] == 4
    assert metrics["run"]["data"] == f"the test images of {data}"
    paths = [
        row["path"] for row in csv.DictReader((tmp_path / "reports" / "predictions.csv").open())
    ]
    assert paths == [row["path"] for row in rows if row.get("split") == "test"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("extra_class", "has classes the model"),
        ("empty_folder", "has no class folders"),
        ("missing_weights", "does not exist"),
        ("foreign_weights", "is not an imgclf weights file"),
        ("text_weights", "is not a readable imgclf weights file"),
        ("missing_part", "stores no 'valid' images"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    cli, fitted_weights, tiny_root, tmp_path, capsys, setup, message
):
    weights, extra = fitted_weights, []
    if setup == "extra_class":
        data = _held_out_copy(tiny_root, tmp_path / "data")
        shutil.copytree(data / "circle", data / "hexagon")
        extra = ["--data", str(data)]
    elif setup == "empty_folder":
        (tmp_path / "empty").mkdir()
        extra = ["--data", str(tmp_path / "empty")]
    elif setup == "missing_weights":
        weights = tmp_path / "nowhere.pth"
    elif setup == "foreign_weights":
        weights = tmp_path / "other.pth"
        torch.save({"state_dict": {}}, weights)
    elif setup == "text_weights":
        weights = tmp_path / "notes.pth"
        weights.write_text("not weights")
    else:
        extra = ["--split", "valid"]
    assert cli.main(_report_args(weights, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("inference.py: error: ")
    assert message in err
    assert err.count("\n") == 1
    if setup == "extra_class":
        assert "hexagon" in err
        assert ", ".join(sorted(TINY_CLASSES)) in err


def test_entry_script_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "utils" / "inference.py"),
            "--weights",
            str(tmp_path / "x.pth"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    missing = tmp_path / "x.pth"
    assert result.stderr.startswith(f"inference.py: error: Weights file {missing} does not exist")


def test_report_with_tta_averages_each_photo_with_its_mirror(cli, fitted_weights, tmp_path):
    assert cli.main(_report_args(fitted_weights, tmp_path / "plain")) == 0
    assert cli.main(_report_args(fitted_weights, tmp_path / "tta", "--tta")) == 0
    plain = json.loads((tmp_path / "plain" / "reports" / "metrics.json").read_text())
    tta = json.loads((tmp_path / "tta" / "reports" / "metrics.json").read_text())
    assert (plain["run"]["tta"], tta["run"]["tta"]) == (False, True)
    rows = {
        name: list(csv.DictReader((tmp_path / name / "reports" / "predictions.csv").open()))
        for name in ("plain", "tta")
    }
    # Same images in the same order, other probabilities (the mirrors are other inputs).
    assert [r["path"] for r in rows["plain"]] == [r["path"] for r in rows["tta"]]
    assert any(a != b for a, b in zip(rows["plain"], rows["tta"], strict=True))


def test_report_follows_the_weights_files_tta_unless_told(cli, fitted_weights, tmp_path, capsys):
    from imgclf.model.weights import load_weights, save_weights

    weights = load_weights(fitted_weights)
    weights.tta = True  # trained with flips (export.tta: auto)
    flipped = save_weights(tmp_path / "flipped.pth", weights)
    assert cli.main(_report_args(flipped, tmp_path / "default")) == 0
    assert "mirror-averaged (--no-tta: off)" in capsys.readouterr().out
    assert cli.main(_report_args(flipped, tmp_path / "off", "--no-tta")) == 0
    assert "mirror-averaged" not in capsys.readouterr().out
    runs = [
        json.loads((tmp_path / name / "reports" / "metrics.json").read_text())["run"]
        for name in ("default", "off")
    ]
    assert [run["tta"] for run in runs] == [True, False]
