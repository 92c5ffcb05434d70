#!/usr/bin/env bash
# Usage: docker/build.sh [DOCKER_BUILD_OPTION...]
# Builds the image $IMGCLF_IMAGE:$IMGCLF_TAG (default imgclf:latest) from docker/Dockerfile, with
# the project folder as the build context; works from any current directory. The container user
# gets your user and group ids, so files it writes to a mounted folder are yours.
# IMGCLF_CA_BUNDLE: a CA bundle for pip inside the build (a company proxy), given to the build as
# the secret ca_bundle, so it stays out of the image. Options go to docker build, e.g. a mirror:
#   docker/build.sh --build-arg INDEX_URL=https://mirror.example/simple
# or --build-arg EXTRA_INDEX_URLS=... / TORCH_INDEX_URL=... / --no-cache (docs/docker.md).
set -euo pipefail
# shellcheck source=docker/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # also answers -h / --help

options=()
# Root's ids already exist in the base image; the Dockerfile's defaults (1000) apply then.
if [ "$(id -u)" != 0 ] && [ "$(id -g)" != 0 ]; then
    options+=(--build-arg "USER_UID=$(id -u)" --build-arg "USER_GID=$(id -g)")
fi
if [ -n "${IMGCLF_CA_BUNDLE:-}" ]; then
    if [ ! -f "$IMGCLF_CA_BUNDLE" ]; then
        echo "docker/build.sh: IMGCLF_CA_BUNDLE=$IMGCLF_CA_BUNDLE is not a file; give the CA bundle pip should trust (e.g. /etc/ssl/certs/ca-certificates.crt)." >&2
        exit 2
    fi
    options+=(--secret "id=ca_bundle,src=$IMGCLF_CA_BUNDLE")
fi
exec docker build --file "$project_root/docker/Dockerfile" --tag "$image" "${options[@]}" "$@" \
    "$project_root"
