#!/usr/bin/env bash
# Usage: docker/run.sh [COMMAND [ARG...]]
# Starts a throwaway container of the image built by docker/build.sh ($IMGCLF_IMAGE:$IMGCLF_TAG,
# default imgclf:latest) in the project folder. Without COMMAND it serves the shipped weights
# (python utils/serve.py) on the host's port $IMGCLF_PORT (default 8000; 127.0.0.1:8000 keeps it
# local); with COMMAND it runs COMMAND instead, publishing nothing.
# Examples: docker/run.sh    docker/run.sh make demo    docker/run.sh bash
set -euo pipefail
# shellcheck source=docker/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # also answers -h / --help

if [ $# -eq 0 ]; then
    # The image's default command is the service on the container's port 8000.
    docker_run --publish "${IMGCLF_PORT:-8000}:8000" "$image"
fi
# The image's HEALTHCHECK asks the service, which a command does not start.
docker_run --no-healthcheck "$image" "$@"
