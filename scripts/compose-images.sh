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
#   BINDERY_PYTHON_VERSIONS   the Pythons the builder has base images of: as given (a JSON
#                             list or words), else every one scripts/base-image.sh builds by
#                             default; as a JSON list
#   BINDERY_BUILD_BASE_VOLUME a volume holding the build sandbox's image store with their base
#                             images (scripts/base-image.sh, run by deploy/builder-entrypoint.sh
#                             in a container of the service image, as the builder would at its
#                             first start), which the builder copies onto a fresh build disk
# Each image is tagged with a hash of what goes into it (its Containerfile, the files it copies:
# for the service image the checkout's files but those .containerignore leaves out), the volume
# named by the base images' names (which hash their build context), and an image or volume that
# exists is only named: a second run with nothing changed takes a second or two.
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

# build_base SERVICE_IMAGE: the volume with the base images of BINDERY_PYTHON_VERSIONS.
# A volume is complete once it holds the mark the last step writes; one that is not (a run cut
# short) is made again.
build_base() {
    local image=$1 names volume mark=.bindery-base-images
    names=$(scripts/base-image.sh --name)
    volume=bindery-build-base-$(sha256sum <<<"$names" | cut -c1-12)
    if ! podman volume exists "$volume" \
        || [[ ! -e $(podman volume inspect --format '{{.Mountpoint}}' "$volume")/$mark ]]; then
        log "building the base images into the volume $volume"
        podman volume rm -f "$volume" >/dev/null 2>&1 || true
        podman volume create --label io.bindery.compose-base=true "$volume" >/dev/null
        local mounts=(--volume "$volume:/var/lib/bindery-build")
        if [[ -r $ca_bundle ]]; then
            mounts+=(--volume "$ca_bundle:$ca_bundle:ro")
        fi
        # Privileged and root, as the builder's container is (compose.yaml says why).
        podman run --rm --privileged --user root "${mounts[@]}" \
            --env BINDERY_CA_BUNDLE="$ca_bundle" --env BINDERY_PYTHON_VERSIONS \
            ${BINDERY_PYTHON_INSTALL_MIRROR:+--env BINDERY_PYTHON_INSTALL_MIRROR} \
            "$image" deploy/builder-entrypoint.sh touch "/var/lib/bindery-build/$mark" >&2
        # Earlier volumes, unless a container still uses one (podman refuses then).
        podman volume ls -q --filter label=io.bindery.compose-base=true | grep -vxF "$volume" \
            | xargs -r podman volume rm >/dev/null 2>&1 || true
    fi
    echo "$volume"
}

mapfile -d '' service_files < <(context_files)
service_image=$(build bindery-service deploy/Containerfile "${service_files[@]}")
# The versions scripts/base-image.sh builds, from the names it gives their images (...-py3.11).
BINDERY_PYTHON_VERSIONS=$(scripts/base-image.sh --name \
    | awk '{ sub(/.*-py/, ""); printf "%s\"%s\"", (NR > 1 ? "," : "["), $0 } END { print "]" }')
export BINDERY_PYTHON_VERSIONS
echo "BINDERY_COMPOSE_BASE=$base"
echo "BINDERY_BROKER_IMAGE=$(build bindery-broker deploy/compose/broker.Containerfile config/rabbitmq.conf)"
echo "BINDERY_REGISTRY_IMAGE=$(build bindery-registry deploy/compose/registry.Containerfile config/registry.yml)"
echo "BINDERY_SERVICE_IMAGE=$service_image"
echo "BINDERY_PYTHON_VERSIONS=$BINDERY_PYTHON_VERSIONS"
echo "BINDERY_BUILD_BASE_VOLUME=$(build_base "$service_image")"
