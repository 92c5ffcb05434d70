"""Repair the installed Catalyst 21.12 for Python >= 3.10 (run by `make setup` and the Dockerfile).

    python tools/patch_catalyst.py          # patch in place (idempotent)
    python tools/patch_catalyst.py --check  # exit 1 if the installed copy still needs the patch

Catalyst 21.12 is the last release with `catalyst-dl run --config` and stages, but it still uses
`collections.Mapping` / `collections.MutableMapping`, which Python 3.10 removed. `merge_dicts`
needs them, so `catalyst-dl run --config a.yaml b.yaml` crashes before any of our code is
imported; no import-time shim can help, the installed files themselves must change. Each edit
below names the exact text it replaces, so an unexpected Catalyst version fails loudly instead of
half-patching.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

EXPECTED_VERSION = "21.12"

# (file relative to the catalyst package, text to find, replacement)
EDITS: list[tuple[str, str, str]] = [
    (
        "utils/misc.py",
        "isinstance(merge_dict[k], collections.Mapping)",
        "isinstance(merge_dict[k], collections.abc.Mapping)",
    ),
    (
        "utils/misc.py",
        "isinstance(value, collections.MutableMapping)",
        "isinstance(value, collections.abc.MutableMapping)",
    ),
    (
        "contrib/data/collate_fn.py",
        "isinstance(batch[0], collections.Mapping)",
        "isinstance(batch[0], collections.abc.Mapping)",
    ),
    (
        "runners/self_supervised.py",
        "isinstance(self.model, (collections.Mapping, nn.ModuleDict))",
        "isinstance(self.model, (collections.abc.Mapping, nn.ModuleDict))",
    ),
]
# `collections.abc` is a submodule: `import collections` alone does not guarantee the attribute.
IMPORT_OLD = "import collections\n"
IMPORT_NEW = "import collections\nimport collections.abc\n"


def catalyst_dir() -> Path:
    """Locate the installed catalyst package without importing it."""
    spec = importlib.util.find_spec("catalyst")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("catalyst is not installed in this environment; run `make setup` first.")
    return Path(next(iter(spec.submodule_search_locations)))


def patch_file(path: Path, edits: list[tuple[str, str]], check_only: bool) -> bool:
    """Apply `edits` to `path`; True when the file needed (with check_only: needs) work."""
    text = path.read_text()
    new = text
    for old, replacement in edits:
        if replacement in new:
            continue
        if old not in new:
            sys.exit(
                f"{path}: expected text {old!r} not found; is this Catalyst {EXPECTED_VERSION}?"
            )
        new = new.replace(old, replacement)
    if "import collections.abc\n" not in new:
        if IMPORT_OLD not in new:
            sys.exit(f"{path}: no `import collections` line found; is this Catalyst 21.12?")
        new = new.replace(IMPORT_OLD, IMPORT_NEW, 1)
    if new == text:
        return False
    if not check_only:
        tmp = path.with_suffix(".py.tmp")
        tmp.write_text(new)
        tmp.replace(path)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only report whether a patch is needed"
    )
    args = parser.parse_args()

    root = catalyst_dir()
    by_file: dict[str, list[tuple[str, str]]] = {}
    for rel, old, new in EDITS:
        by_file.setdefault(rel, []).append((old, new))
    changed = [rel for rel, edits in by_file.items() if patch_file(root / rel, edits, args.check)]
    if args.check:
        print(
            f"catalyst needs the patch: {', '.join(changed)}" if changed else "catalyst is patched"
        )
        return 1 if changed else 0
    print(f"patched catalyst: {', '.join(changed)}" if changed else "catalyst already patched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
