#!/usr/bin/env bash
# Install imgclf and its pinned dependencies into the environment of the given Python.
# Usage: [TORCH_INDEX_URL=URL] tools/install.sh [--dependencies-only] PATH/TO/venv/bin/python
# Used by `make setup` and docker/Dockerfile, so the image is built by the tested steps.
# --dependencies-only: everything but imgclf itself, which is the only step that reads
# pyproject.toml (the Dockerfile's install layer, so that a ruff or pytest setting there does not
# reinstall torch; its `make setup` installs the package afterwards).
set -euo pipefail
dependencies_only=0
if [ "${1:-}" = --dependencies-only ]; then
    dependencies_only=1
    shift
fi
py=${1:?usage: tools/install.sh [--dependencies-only] PATH/TO/venv/bin/python}
cd "$(dirname "$0")/.."

# pip >= 24.1 refuses every Catalyst release (invalid version specifiers in its metadata).
"$py" -m pip install --quiet --disable-pip-version-check 'pip<24.1'
# TORCH_INDEX_URL (optional): torch and torchvision from that index first, e.g. the CPU-only builds
# at https://download.pytorch.org/whl/cpu (PyPI's Linux wheels bundle about 4 GB of CUDA
# libraries). The pins still hold (==2.14.1 accepts the index's 2.14.1+cpu); --no-deps, so their
# own dependencies come from the usual index under the constraints, with requirements.txt below.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$py" -m pip install --quiet --disable-pip-version-check --index-url "$TORCH_INDEX_URL" \
        --no-deps -c constraints.txt torch torchvision
fi
"$py" -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
# --no-deps: Catalyst declares tensorboardX<2.3, which breaks against current protobuf;
# requirements.txt lists its real needs instead.
"$py" -m pip install --quiet --disable-pip-version-check --no-deps catalyst==21.12
"$py" tools/patch_catalyst.py
if [ "$dependencies_only" = 1 ]; then
    exit 0
fi
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
