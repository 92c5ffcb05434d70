#!/usr/bin/env bash
# Usage: tools/podman_setup.sh [--stand-in] [STATE_DIR]
# Makes podman stand in for a Docker engine on a Debian 12 machine without one (run it as root),
# for docker/build.sh, docker/run.sh, docker/run_volume.sh and `make test-docker`:
#   - podman and runc from Debian's packages, and debootstrap;
#   - STATE_DIR/bin/docker, a shim that runs podman (put it first on PATH);
#   - STATE_DIR/containers.conf: runc (crun fails on this kind of machine's hybrid cgroups) and
#     the ulimits these machines allow (higher ones make every container fail to start);
#   - python:3.11-slim: pulled from Docker Hub, or (with --stand-in, or when the pull fails) a
#     stand-in bootstrapped from Debian's packages with python3.11 linked into /usr/local/bin.
# STATE_DIR defaults to /opt/imgclf-podman. It is idempotent: rerunning keeps what is there.
# Progress goes to stderr; stdout is the two lines to export, so this sets the shell up:
#   eval "$(tools/podman_setup.sh)"
set -euo pipefail

stand_in=0
if [ "${1:-}" = --stand-in ]; then
    stand_in=1
    shift
fi
case "${1:-}" in
-h | --help)
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
    ;;
esac
state_dir=${1:-/opt/imgclf-podman}
base_image=python:3.11-slim
# The Debian mirror for debootstrap; the one apt uses on Debian 12 by default.
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { echo "tools/podman_setup.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "installs packages and writes $state_dir: run it as root (sudo tools/podman_setup.sh)."
    exit 2
fi

missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} from Debian's packages"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install --yes -q "${missing[@]}" >&2
fi

mkdir -p "$state_dir/bin"
# BUILDAH_FORMAT=docker: podman builds OCI images by default, and those drop the Dockerfile's
# HEALTHCHECK; Docker-format images keep it.
cat >"$state_dir/bin/docker" <<'EOF'
#!/bin/sh
# docker -> podman (written by tools/podman_setup.sh)
export BUILDAH_FORMAT="${BUILDAH_FORMAT:-docker}"
exec podman "$@"
EOF
chmod 755 "$state_dir/bin/docker"
cat >"$state_dir/containers.conf" <<'EOF'
# Written by tools/podman_setup.sh; used through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$state_dir/containers.conf"

if podman image exists "$base_image"; then
    say "$base_image is there already"
elif [ "$stand_in" = 0 ] && timeout 300 podman pull "docker.io/library/$base_image" >&2; then
    say "pulled $base_image"
else
    say "building a stand-in $base_image with debootstrap from $mirror (a few minutes)"
    root=$(mktemp -d /var/tmp/imgclf-base.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" "$mirror" >&2
    # Where python:3.11-slim has its interpreter; the Dockerfile and the Makefile call python3.
    for name in python3.11 python3 python; do
        ln -sf /usr/bin/python3.11 "$root/usr/local/bin/$name"
    done
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    tar --numeric-owner -C "$root" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - "$base_image" >&2
    say "imported the stand-in as $base_image"
fi

echo "export PATH=\"$state_dir/bin:\$PATH\""
echo "export CONTAINERS_CONF=\"$state_dir/containers.conf\""
