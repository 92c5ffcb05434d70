"""The floors of docs/architecture.md, checked on the source: every import in imgclf/ goes to its
own package or to a floor below, and only imgclf/train imports Catalyst or hydra-slayer.

tests/model/test_model_no_catalyst.py checks the same rule at run time (what a command really
loads); this test catches an import on a path no test happens to run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "imgclf"
COMMON = {"imgclf", "errors", "fileio", "imaging", "decoding"}
# Each part of imgclf → the parts it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "imgclf": set(),
    "errors": set(),
    "fileio": set(),
    "imaging": set(),
    "decoding": {"imaging"},
    "acquire": COMMON - {"decoding"},
    "dataset": COMMON | {"acquire"},
    "model": COMMON | {"dataset"},
    "train": COMMON | {"dataset", "model"},
    # predict and serve fetch URLs with acquire's fetcher and its address guard (floor 2).
    "predict": COMMON | {"acquire", "dataset", "model"},
    "evaluate": COMMON | {"dataset", "model", "predict"},
    "search": COMMON | {"dataset", "model", "predict"},
    "serve": COMMON | {"acquire", "dataset", "model", "predict", "search"},
    "demo": COMMON,
    "commands": COMMON | {"acquire", "dataset", "model", "predict", "evaluate", "search", "serve"},
}
TRAINING_FRAMEWORK = ("catalyst", "hydra_slayer")


def part_of(module: str) -> str:
    """`imgclf.model.weights` → "model"; `imgclf` → "imgclf"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "imgclf"


def imports(path: Path) -> list[str]:
    """Absolute module names imported anywhere in the file (inside functions too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


SOURCES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_go_down_the_floors_only(path):
    own = part_of(module_name(path))
    assert own in ALLOWED, f"{own} is not placed on a floor in docs/architecture.md"
    for name in imports(path):
        top = name.split(".")[0]
        if top in TRAINING_FRAMEWORK:
            assert own == "train", f"{path.name} imports {name}: only imgclf/train may"
        if top == "imgclf" and part_of(name) != own:
            assert part_of(name) in ALLOWED[own], f"{own} must not import {name}"


def test_the_check_reads_real_imports():
    runner = imports(PACKAGE / "train" / "runner.py")
    assert any(name.startswith("catalyst") for name in runner)
    assert "imgclf.model.factory" in runner
