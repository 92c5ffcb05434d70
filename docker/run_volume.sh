#!/usr/bin/env bash
# Usage: docker/run_volume.sh [HOST_DATA_DIR [COMMAND [ARG...]]]
# Like docker/run.sh, with HOST_DATA_DIR mounted on the container's data/ folder, so downloads and
# caches stay on the host. HOST_DATA_DIR is relative to the current directory; by default the
# project's data/ folder. A missing folder is an error (exit 2).
# Example: docker/run_volume.sh ~/datasets python utils/download_data.py --urls data/urls.csv
set -euo pipefail
# shellcheck source=docker/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # also answers -h / --help

data_dir="${1:-$project_root/data}"
if [ ! -d "$data_dir" ]; then
    echo "docker/run_volume.sh: $data_dir is not a folder; give an existing HOST_DATA_DIR (e.g. ./data)." >&2
    exit 2
fi
shift $(($# > 0 ? 1 : 0))
# docker needs an absolute path, otherwise it takes the argument for a named volume.
host_data=$(cd "$data_dir" && pwd)
docker_run --volume "$host_data:$container_project/data" "$image" "$@"
