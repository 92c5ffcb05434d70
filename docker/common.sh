# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
# Sourced by docker/build.sh, run.sh and run_volume.sh (not run on its own): the project root,
# the image name and the one way this project starts a container.

# The project root, whatever the caller's current directory.
project_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Image name and tag, overridable: IMGCLF_IMAGE=registry/imgclf IMGCLF_TAG=v1 docker/build.sh
image="${IMGCLF_IMAGE:-imgclf}:${IMGCLF_TAG:-latest}"
# The project folder inside the image (WORKDIR in docker/Dockerfile).
container_project=/home/imgclf/imgclf

# usage FILE: print the comment block at the top of FILE (its usage), without the '#'.
usage() {
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$1"
}

# docker_run [DOCKER_RUN_OPTION...] IMAGE [COMMAND...]: a throwaway container; a terminal when
# there is one (-it), plain stdin otherwise so pipes and CI work too.
docker_run() {
    local terminal=(--interactive)
    if [ -t 0 ] && [ -t 1 ]; then
        terminal+=(--tty)
    fi
    exec docker run --rm "${terminal[@]}" "$@"
}

# Sourced without arguments, this file sees the calling script's arguments: every script
# answers -h / --help with the comment block at its top.
case "${1:-}" in
-h | --help)
    usage "${BASH_SOURCE[1]}"
    exit 0
    ;;
esac
