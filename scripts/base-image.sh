#!/usr/bin/env bash
# Builds the shared base image localhost/bindery-base:<tag> that every repository image starts
# FROM, and prints its name as the last line of stdout (everything else goes to stderr).
# <tag> is a hash of the files in the base image's build context; bindery.builder.baseimage
# computes the same hash in Python, so services know the name without running this script.
# Idempotent: when the image exists it only prints the name. `--name` prints it without building.
# The image lives in the build sandbox's image store (rootless podman as the sandbox user, see
# services/builder/src/bindery/builder/sandbox.py), where every build runs.
#
# Environment: BINDERY_CA_BUNDLE  CA bundle handed to pip/uv as a build secret
#                                 (default: the host's, which trusts the TLS-intercepting proxy).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
context=$root/services/builder/src/bindery/builder/baseimage/context
rootfs=localhost/bindery-rootfs:bookworm
ca_bundle=${BINDERY_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
podman() { "$root/.venv/bin/bindery-sandbox-podman" "$@"; }

# One "sha256  ./path" line per file, in byte order of the paths, hashed again: a rename
# changes the tag as much as an edit does.
tag=$(cd "$context" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum \
      | sha256sum | cut -c1-12)
image=localhost/bindery-base:$tag

if [[ ${1:-} == --name ]] || podman image exists "$image"; then
    echo "$image"
    exit 0
fi

# No registry can be pulled from here: the Debian root filesystem is made locally, once.
if ! podman image exists "$rootfs"; then
    rootfs_dir=$(mktemp -d)
    trap 'rm -rf "$rootfs_dir"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs_dir" http://deb.debian.org/debian >&2
    tar -C "$rootfs_dir" -c . | podman import - "$rootfs" >&2
fi

secret=()
if [[ -r $ca_bundle ]]; then
    secret=(--secret "id=pipca,src=$ca_bundle")
fi
# The sandbox user reads the context: a copy of its own, on the sandbox's disk.
build_user=${BINDERY_BUILD_USER:-bindery-build}
sandbox_context=$(mktemp -d -p "$(getent passwd "$build_user" | cut -d: -f6)/tmp")
trap 'rm -rf "$sandbox_context" ${rootfs_dir:+"$rootfs_dir"}' EXIT
cp -r "$context/." "$sandbox_context"
chown -R "$build_user:" "$sandbox_context"
podman build --layers "${secret[@]}" --tag "$image" "$sandbox_context" >&2
echo "$image"
