#!/usr/bin/env bash
# Builds the images compose.yaml runs, here, from nothing a public registry serves (none can be
# pulled from this machine), and prints the settings that name them, one KEY=VALUE a line, on
# stdout (everything else goes to stderr):
#   BINDERY_COMPOSE_BASE      localhost/bindery-rootfs:bookworm: Debian bookworm made with
#                             debootstrap, as scripts/base-image.sh makes the suites sessions
#                             start from (the same command; here in root's image store)
#   BINDERY_BROKER_IMAGE      Debian's rabbitmq-server     deploy/compose/broker.Containerfile
#   BINDERY_REGISTRY_IMAGE    Debian's docker-registry     deploy/compose/registry.Containerfile
#   BINDERY_SERVICE_IMAGE     every Bindery service and the session node   deploy/Containerfile
# Each image is tagged with a hash of what goes into it (its Containerfile, the files it copies:
# for the service image the checkout's files but those .containerignore leaves out), and an
# image that exists is only named: a second run with nothing changed takes a second or two.
#
# usage: set -a; . <(scripts/compose-images.sh); set +a; podman-compose up -d
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
ca_bundle=${BINDERY_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
base=localhost/bindery-rootfs:bookworm

log() { printf '[compose-images] %s\n' "$*" >&2; }

if ! podman image exists "$base"; then
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    log "making $base with debootstrap"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >&2
    tar -C "$rootfs" -c . | podman import - "$base" >&2
fi

# hash FILE...: one "sha256  path" line per file, in byte order of the paths, hashed again.
hash() { printf '%s\0' "$@" | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12; }

# The checkout's files (tracked, or new and not ignored) but what .containerignore leaves out:
# its patterns as git's exclude pathspecs, so one list says both what is copied and what is hashed.
context_files() {
    local excludes=()
    while read -r pattern; do
        [[ -z $pattern || $pattern == \#* ]] || excludes+=(":(exclude,glob)$pattern" ":(exclude,glob)$pattern/**")
    done < .containerignore
    git ls-files -z --cached --others --exclude-standard -- . "${excludes[@]}" \
        | while IFS= read -r -d '' file; do [[ -f $file ]] && printf '%s\0' "$file"; done
}

secret=()
if [[ -r $ca_bundle ]]; then
    secret=(--secret "id=pipca,src=$ca_bundle")
fi

# build NAME CONTAINERFILE FILE...: the image NAME:<hash of the Containerfile and FILEs>.
build() {
    local name=$1 containerfile=$2
    shift 2
    local image
    image=localhost/$name:$(hash "$containerfile" "$@")
    if ! podman image exists "$image"; then
        log "building $image"
        podman build --layers "${secret[@]}" --build-arg "BASE=$base" \
            --file "$containerfile" --tag "$image" . >&2
        # Earlier builds of the name, unless a container still uses one (podman refuses then).
        podman images --format '{{.Repository}}:{{.Tag}}' "localhost/$name" | grep -vxF "$image" \
            | xargs -r podman rmi >/dev/null 2>&1 || true
    fi
    echo "$image"
}

mapfile -d '' service_files < <(context_files)
echo "BINDERY_COMPOSE_BASE=$base"
echo "BINDERY_BROKER_IMAGE=$(build bindery-broker deploy/compose/broker.Containerfile config/rabbitmq.conf)"
echo "BINDERY_REGISTRY_IMAGE=$(build bindery-registry deploy/compose/registry.Containerfile config/registry.yml)"
echo "BINDERY_SERVICE_IMAGE=$(build bindery-service deploy/Containerfile "${service_files[@]}")"
