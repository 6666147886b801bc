#!/usr/bin/env bash
# Builds the base images localhost/bindery-base:<tag>-py<version> that repository images start
# FROM, one per Python version, and prints their names, one a line, on stdout (everything else
# goes to stderr). Usage: base-image.sh [--name] [VERSION ...]
# VERSIONs default to BINDERY_PYTHON_VERSIONS (the builder's setting: a JSON list or words),
# else every version the context's `pythons` file has from a Debian suite; each is built from
# the root filesystem of the suite that file names for it (made here with debootstrap, once per
# suite). A version whose source is `uv` is installed by uv from BINDERY_PYTHON_INSTALL_MIRROR
# (the builder's setting of that name) on bookworm's.
# <tag> is a hash of the files in the base images' build context; bindery.builder.baseimage
# computes the same hash in Python, so services know the names without running this script.
# Idempotent: an image that exists is only named. `--name` prints the names without building.
# The images live in the build sandbox's image store (rootless podman as the sandbox user, see
# services/builder/src/bindery/builder/sandbox.py), where every build runs.
#
# Environment: BINDERY_CA_BUNDLE  CA bundle handed to pip/uv as a build secret
#                                 (default: the host's, which trusts the TLS-intercepting proxy).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
context=$root/services/builder/src/bindery/builder/baseimage/context
ca_bundle=${BINDERY_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
podman() { "$root/.venv/bin/bindery-sandbox-podman" "$@"; }

name_only=false
if [[ ${1:-} == --name ]]; then
    name_only=true
    shift
fi
versions=("$@")
if ((${#versions[@]} == 0)); then
    read -r -a versions <<<"$(tr '[]",' '    ' <<<"${BINDERY_PYTHON_VERSIONS:-}")"
fi
if ((${#versions[@]} == 0)); then
    read -r -a versions <<<"$(awk '!/^#/ && NF && $2 != "uv" { printf "%s ", $1 }' \
        "$context/pythons")"
fi

# One "sha256  ./path" line per file, in byte order of the paths, hashed again: a rename
# changes the tag as much as an edit does.
tag=$(cd "$context" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum \
      | sha256sum | cut -c1-12)

# build VERSION SUITE IMAGE, in a subshell of its own: the versions build side by side.
build() (
    version=$1 suite=$2 image=$3
    mirror=()
    if [[ $suite == uv ]]; then
        suite=bookworm
        mirror=(--build-arg "PYTHON_MIRROR=$BINDERY_PYTHON_INSTALL_MIRROR")
    fi
    rootfs=localhost/bindery-rootfs:$suite
    scratch=()
    trap 'rm -rf "${scratch[@]}"' EXIT
    # No registry can be pulled from here: each suite's root filesystem is made locally, once.
    if ! podman image exists "$rootfs"; then
        rootfs_dir=$(mktemp -d)
        scratch+=("$rootfs_dir")
        debootstrap --variant=minbase "$suite" "$rootfs_dir" http://deb.debian.org/debian >&2
        tar -C "$rootfs_dir" -c . | podman import - "$rootfs" >&2
    fi
    secret=()
    if [[ -r $ca_bundle ]]; then
        secret=(--secret "id=pipca,src=$ca_bundle")
    fi
    # The sandbox user reads the context: a copy of its own, on the sandbox's disk.
    build_user=${BINDERY_BUILD_USER:-bindery-build}
    sandbox_context=$(mktemp -d -p "$(getent passwd "$build_user" | cut -d: -f6)/tmp")
    scratch+=("$sandbox_context")
    cp -r "$context/." "$sandbox_context"
    chown -R "$build_user:" "$sandbox_context"
    # Read by jovyan inside the build (whatever mode the checkout gave the files).
    chmod -R a+rX "$sandbox_context"
    podman build --layers "${secret[@]}" "${mirror[@]}" --build-arg "SUITE=$suite" \
        --build-arg "PYTHON=$version" --tag "$image" "$sandbox_context" >&2
)

names=()
builds=()
for version in "${versions[@]}"; do
    suite=$(awk -v v="$version" '$1 == v { print $2 }' "$context/pythons")
    if [[ -z $suite ]]; then
        echo "base-image.sh: no Python $version in $context/pythons" >&2
        exit 2
    fi
    if [[ $suite == uv && -z ${BINDERY_PYTHON_INSTALL_MIRROR:-} ]]; then
        echo "base-image.sh: Python $version comes from uv: set BINDERY_PYTHON_INSTALL_MIRROR" \
             "to a mirror of python-build-standalone's releases" >&2
        exit 2
    fi
    image=localhost/bindery-base:$tag-py$version
    names+=("$image")
    if ! $name_only && ! podman image exists "$image"; then
        build "$version" "$suite" "$image" &
        builds+=($!)
    fi
done
failed=0
for pid in "${builds[@]}"; do
    wait "$pid" || failed=1
done
if ((failed)); then
    echo "base-image.sh: a base image failed to build (its output is above)" >&2
    exit 1
fi
printf '%s\n' "${names[@]}"
