"""Catalyst fenced in: its private API is reached from one module, and importing imgclf changes
no process-wide state except in the one place that says so."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from train_helpers import ROOT

PACKAGE = ROOT / "imgclf"
COMPAT = PACKAGE / "train" / "catalyst_compat.py"
# Catalyst names and attributes outside its documented API, as imgclf has used them.
PRIVATE_CATALYST = re.compile(
    r"catalyst(\.\w+)*\._(?!_)\w+"  # a private module, e.g. catalyst.core._misc
    r"|\b_get_original_callback\b|\b_use_model_selection\b|\btop_best_metrics\b"
    r"|\b_save_checkpoint\b|\._config\b|\._stage_config\b|\._resume\b|\._input_key\b"
    r"|\.all_gather\s*="
)
# Module-level statements allowed to change process-wide state, with why.
ALLOWED_AT_IMPORT = {
    # The experiment folder registers its components and installs the Catalyst repairs.
    ("train/__init__.py", "REGISTRY.add"),
    ("train/__init__.py", "catalyst_compat.install"),
    # A filter for one torchvision deprecation message, next to the fallback it announces.
    ("decoding.py", "warnings.filterwarnings"),
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_catalyst_compat_uses_catalysts_private_api():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in modules()
        if path != COMPAT
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_CATALYST.search(line.split("#")[0])
    ]
    assert not found, "reach Catalyst's private API through imgclf.train.catalyst_compat:\n" + (
        "\n".join(found)
    )
    assert PRIVATE_CATALYST.search(COMPAT.read_text())  # the pattern does find what it seeks


def _import_time_effects(tree: ast.Module) -> list[tuple[int, str]]:
    """Calls and attribute assignments that run when the module is imported."""
    effects = []
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            continue  # `if __name__ == "__main__":` runs only as a script
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Try) and "check_catalyst_version" in ast.unparse(node):
            continue  # the version check, which only exits on an unsupported Catalyst
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and isinstance(node, ast.Expr | ast.For | ast.With):
                effects.append((sub.lineno, ast.unparse(sub.func)))
            elif isinstance(sub, ast.Assign | ast.AugAssign):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                effects += [
                    (sub.lineno, f"{ast.unparse(target)} =")
                    for target in targets
                    if isinstance(target, ast.Attribute)
                ]
    return effects


def test_import_time_side_effects_happen_in_one_visible_place():
    found = []
    for path in modules():
        relative = path.relative_to(PACKAGE).as_posix()
        for line, effect in _import_time_effects(ast.parse(path.read_text())):
            allowed = any(
                relative.endswith(suffix) and effect == call for suffix, call in ALLOWED_AT_IMPORT
            )
            if not allowed:
                found.append(f"imgclf/{relative}:{line}: {effect}")
    assert not found, (
        "import-time changes to process-wide state (warnings filters, monkeypatches, thread "
        "counts) belong in imgclf.train.catalyst_compat.install or inside a function:\n"
        + "\n".join(found)
    )


def test_the_fence_finds_a_monkeypatch_and_a_warnings_filter():
    source = (
        "import warnings\nimport catalyst.utils\n"
        "warnings.filterwarnings('ignore')\ncatalyst.utils.all_gather = len\n"
        "def f():\n    warnings.filterwarnings('ignore')\n"
    )
    assert _import_time_effects(ast.parse(source)) == [
        (3, "warnings.filterwarnings"),
        (4, "catalyst.utils.all_gather ="),
    ]
    assert PRIVATE_CATALYST.search("from catalyst.core._misc import callback_isinstance")
