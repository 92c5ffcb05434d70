"""Write a run's weights file again from one of its checkpoints.

    python -m imgclf.train.reexport logs/train                          # best checkpoint
    python -m imgclf.train.reexport logs/train/checkpoints/train.7.pth --out epoch7.pth

For when the export at the end of training failed (a full disk, a folder that went read-only),
the weights file was lost, or another epoch's model is wanted. The logdir (the checkpoint's
`checkpoints/` folder's parent) supplies the rest of the file: classes, split and image size
from `split.json`, architecture and export path from the config Catalyst saved there.
Exit codes: 0 written, 2 bad argument or unreadable file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgclf.errors import InputError, report_input_error
from imgclf.model.weights import WeightsFile
from imgclf.train.export import best_checkpoint_path, run_config, write_weights_file
from imgclf.train.preflight import check_writable_folder
from imgclf.train.resume import CHECKPOINTS
from imgclf.train.settings import ExportSettings, ModelSettings


def reexport(source: Path, out: Path | None = None) -> tuple[WeightsFile, Path]:
    """Write the weights file of `source` (a run's logdir or one of its checkpoints) to `out`
    (default: the run's `export.weights`); returns the file's content and its path."""
    if source.is_dir():
        logdir, checkpoint = source, best_checkpoint_path(source)
    else:
        logdir, checkpoint = source.parent.parent, source
        if source.parent.name != CHECKPOINTS:
            raise InputError(
                f"{source} is not in a run's {CHECKPOINTS}/ folder; pass a logdir or "
                f"<logdir>/{CHECKPOINTS}/<name>.pth."
            )
    config = run_config(logdir)
    arch = ModelSettings.from_config(config).arch
    out = out or ExportSettings.from_config(config, arch).weights
    check_writable_folder(out.parent, "weights", "--out")
    weights = write_weights_file(logdir, out, arch=arch, config=config, checkpoint_path=checkpoint)
    return weights, out


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, write the file, print where it went."""
    parser = argparse.ArgumentParser(
        prog="python -m imgclf.train.reexport",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", type=Path, help="a run's logdir (its best checkpoint) or one checkpoint file"
    )
    parser.add_argument(
        "--out", type=Path, help="weights file to write (default: the run's export.weights)"
    )
    args = parser.parse_args(argv)
    try:
        weights, out = reexport(args.source, args.out)
    except InputError as error:
        return report_input_error(error, parser.prog)
    epoch, f1 = weights.metrics.get("epoch"), weights.metrics.get("f1_macro")
    print(f"weights: {out} ({weights.arch}, epoch {epoch}, valid macro-F1 {f1})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
