"""The environment `make setup` builds: Catalyst 21.12 patched so multi-config merges work."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_catalyst_patch_is_applied():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "patch_catalyst.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "catalyst is patched" in result.stdout


def test_catalyst_merges_two_configs(tmp_path):
    # The exact path `catalyst-dl run --config a.yaml b.yaml` takes before our code is imported.
    from catalyst.utils.config import load_config
    from catalyst.utils.misc import merge_dicts

    base = tmp_path / "a.yaml"
    override = tmp_path / "b.yaml"
    base.write_text(yaml.safe_dump({"model": {"arch": "mobilenet_v3_small", "pretrained": None}}))
    override.write_text(yaml.safe_dump({"model": {"arch": "resnet18"}}))
    merged = merge_dicts(load_config(str(base)), load_config(str(override)))
    assert merged == {"model": {"arch": "resnet18", "pretrained": None}}
