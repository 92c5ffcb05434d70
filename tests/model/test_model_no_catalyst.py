"""Only imgclf/train imports Catalyst: the inference path (--predict, --export, the report) runs
without loading `catalyst` or `hydra_slayer`.

The commands run one after another in a fresh interpreter, through a small wrapper that executes
the real entry script with runpy and records the names in sys.modules after each (one torch
import for all three keeps the test short). A control run imports imgclf.train the same way and
must be caught, so the check cannot pass by looking nowhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

FORBIDDEN = ("catalyst", "hydra_slayer")
INFERENCE = str(ROOT / "utils" / "inference.py")

# argv: <record file> <JSON list of [script, args...]>; per command its exit code and modules.
WRAPPER = """
import json, runpy, sys
record, commands = sys.argv[1], json.loads(sys.argv[2])
steps = []
for command in commands:
    sys.argv = list(command)
    try:
        runpy.run_path(command[0], run_name="__main__")
        code = 0
    except SystemExit as done:
        code = done.code or 0
    steps.append({"code": code, "modules": sorted(sys.modules)})
with open(record, "w") as handle:
    json.dump(steps, handle)
"""


def run_wrapped(tmp_path: Path, *commands: list[str]) -> list[dict]:
    """Run the commands in one new interpreter; per command its exit code and the modules
    loaded so far."""
    record = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(record), json.dumps(commands)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert record.is_file(), result.stderr
    return json.loads(record.read_text())


def forbidden_modules(modules: list[str]) -> list[str]:
    return [
        name
        for name in modules
        if any(name == top or name.startswith(f"{top}.") for top in FORBIDDEN)
    ]


def test_predict_export_and_report_load_no_catalyst(fitted_weights, tiny_root, tmp_path):
    # A private copy: --export writes its .onnx beside it, not beside the shared fixture.
    weights = str(shutil.copy(fitted_weights, tmp_path / "model.pth"))
    image = str(sorted((tiny_root / "circle").glob("*.jpg"))[0])
    report = ["--out", str(tmp_path / "reports"), "--pictures", str(tmp_path / "pictures")]
    predict, export, evaluate = run_wrapped(
        tmp_path,
        [INFERENCE, "--weights", weights, "--predict", image],
        [INFERENCE, "--weights", weights, "--export", "onnx"],
        [INFERENCE, "--weights", weights, *report, "--bootstrap", "20"],
    )
    assert [step["code"] for step in (predict, export, evaluate)] == [0, 0, 0]
    # Each command did its work...
    assert "imgclf.model.predictor" in predict["modules"]
    assert (tmp_path / "model.onnx").is_file()
    assert (tmp_path / "reports" / "metrics.json").is_file()
    assert "imgclf.evaluate.evaluation" in evaluate["modules"]
    # ...without the training framework.
    for step in (predict, export, evaluate):
        assert forbidden_modules(step["modules"]) == []


def test_the_check_sees_catalyst_when_train_is_imported(tmp_path):
    script = tmp_path / "uses_train.py"
    script.write_text("import imgclf.train.runner\n")
    (step,) = run_wrapped(tmp_path, [str(script)])
    assert step["code"] == 0
    assert {"catalyst", "hydra_slayer"} <= set(forbidden_modules(step["modules"]))
