#!/usr/bin/env bash
# Usage: docker/build.sh [DOCKER_BUILD_OPTION...]
# Builds the CPU image $IMGCLF_IMAGE:$IMGCLF_TAG (default imgclf:latest) from docker/Dockerfile,
# with the project folder as the build context; works from any current directory.
# The container user gets your user and group ids, so files it writes to a mounted folder
# (docker/run_volume.sh) are yours. Example: docker/build.sh --no-cache
set -euo pipefail
# shellcheck source=docker/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # also answers -h / --help

ids=()
# Root's ids already exist in the base image; the Dockerfile's defaults (1000) apply then.
if [ "$(id -u)" != 0 ] && [ "$(id -g)" != 0 ]; then
    ids=(--build-arg "USER_UID=$(id -u)" --build-arg "USER_GID=$(id -g)")
fi
exec docker build --file "$project_root/docker/Dockerfile" --tag "$image" "${ids[@]}" "$@" \
    "$project_root"
