#!/usr/bin/env bash
# Usage: docker/run_volume.sh [HOST_DATA_DIR [COMMAND [ARG...]]]
# Like docker/run.sh COMMAND (default: bash), with HOST_DATA_DIR mounted on the container's data/
# folder, so downloads and caches stay on the host. HOST_DATA_DIR is relative to the current
# directory; by default the project's data/ folder. The container runs as the folder's owner, so
# it can write there (root's folders included) and what it leaves there is the owner's. The mount
# hides the image's own data/, the bundled demo data included (docs/docker.md). A missing folder,
# or one its owner cannot write, is an error (exit 2).
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
if [ $# -eq 0 ]; then
    set -- bash  # the image's default command is the service, which needs no data folder
fi
# docker needs an absolute path, otherwise it takes the argument for a named volume.
host_data=$(cd "$data_dir" && pwd)
owner=$(stat -c %u:%g "$host_data")
mode=$(stat -c %a "$host_data")
if (((8#$mode & 8#200) == 0)); then
    echo "docker/run_volume.sh: $host_data (mode $mode) is not writable by its owner; run chmod u+w '$host_data' or give another folder." >&2
    exit 2
fi
# Group 0 owns the image's project and home folders (group-writable), so any uid can write there.
# No HEALTHCHECK: it asks the service, which a command does not start.
docker_run --user "$owner" --group-add 0 --volume "$host_data:$container_project/data" \
    --no-healthcheck "$image" "$@"
