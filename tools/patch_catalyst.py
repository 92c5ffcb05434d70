"""Repair the installed Catalyst 21.12 for Python >= 3.10 (run by `make setup` and the Dockerfile).

    python tools/patch_catalyst.py          # patch in place (idempotent)
    python tools/patch_catalyst.py --check  # exit 1 if the installed copy still needs the patch

Catalyst 21.12 is the last release with `catalyst-dl run --config` and stages, but it still uses
`collections.Mapping` / `collections.MutableMapping`, which Python 3.10 removed. `merge_dicts`
needs them, so `catalyst-dl run --config a.yaml b.yaml` crashes before any of our code is
imported; no import-time shim can help, the installed files themselves must change. For the same
reason a config file that is missing, not YAML, or a list or a number ends in a traceback from
Catalyst's loader: `LOADER_EDITS` make it one sentence and exit code 2. Each edit below names the
exact text it replaces, so an unexpected Catalyst version fails loudly instead of half-patching.
Everything else imgclf needs from Catalyst beyond its API sits in imgclf/train/catalyst_compat.py.
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

# catalyst-dl run's loading of the --config files: one sentence and exit 2 for a bad file.
LOADER_FILE = "dl/scripts/_misc.py"
LOAD_CONFIG_FUNCTION = '''def _load_config_or_exit(config_path):
    """One --config file; one sentence and exit code 2 when it can't be one (this function
    is added by imgclf's tools/patch_catalyst.py)."""
    import sys

    path = Path(config_path)
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
    else:
        try:
            config = load_config(config_path, ordered=True)
        except Exception as error:  # yaml.YAMLError, a JSON error, an unknown suffix
            problem = "can't be read (" + " ".join(str(error).split()) + "); fix its syntax"
        else:
            if isinstance(config, dict):
                return config
            problem = f"holds a {type(config).__name__}, not a mapping of keys"
    print(f"catalyst-dl run: error: config file {config_path} {problem}.", file=sys.stderr)
    raise SystemExit(2)


'''
LOADER_EDITS: list[tuple[str, str]] = [
    (
        "        config_part = load_config(config_path, ordered=True)\n",
        "        config_part = _load_config_or_exit(config_path)\n",
    ),
    (
        '__all__ = ["parse_config_args", "parse_args_uargs", "get_config_runner"]',
        LOAD_CONFIG_FUNCTION
        + '__all__ = ["parse_config_args", "parse_args_uargs", "get_config_runner"]',
    ),
]


def catalyst_dir() -> Path:
    """Locate the installed catalyst package without importing it."""
    spec = importlib.util.find_spec("catalyst")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("catalyst is not installed in this environment; run `make setup` first.")
    return Path(next(iter(spec.submodule_search_locations)))


def patch_file(
    path: Path, edits: list[tuple[str, str]], check_only: bool, import_abc: bool = True
) -> bool:
    """Apply `edits` to `path` (and, with import_abc, `import collections.abc`); True when the
    file needed (with check_only: needs) work."""
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
    if import_abc and "import collections.abc\n" not in new:
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
    parser.add_argument(
        "--root",
        type=Path,
        help="the catalyst package folder to patch (default: the installed one)",
    )
    args = parser.parse_args()

    root = args.root or catalyst_dir()
    by_file: dict[str, list[tuple[str, str]]] = {}
    for rel, old, new in EDITS:
        by_file.setdefault(rel, []).append((old, new))
    changed = [rel for rel, edits in by_file.items() if patch_file(root / rel, edits, args.check)]
    if patch_file(root / LOADER_FILE, LOADER_EDITS, args.check, import_abc=False):
        changed.append(LOADER_FILE)
    if args.check:
        print(
            f"catalyst needs the patch: {', '.join(changed)}" if changed else "catalyst is patched"
        )
        return 1 if changed else 0
    print(f"patched catalyst: {', '.join(changed)}" if changed else "catalyst already patched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
