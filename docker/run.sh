#!/usr/bin/env bash
# Usage: docker/run.sh [COMMAND [ARG...]]
# Starts a throwaway container of the image built by docker/build.sh ($IMGCLF_IMAGE:$IMGCLF_TAG,
# default imgclf:latest) in the project folder; without COMMAND, an interactive bash.
# Examples: docker/run.sh make demo    docker/run.sh python utils/inference.py --help
set -euo pipefail
# shellcheck source=docker/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # also answers -h / --help

docker_run "$image" "$@"
