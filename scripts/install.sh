#!/usr/bin/env bash
# Install everything Bindery needs on a Debian 12 machine (run as root). Idempotent and quick
# when everything is already present: each step checks before it acts.
#   1. Debian packages (apt-get update only when something is missing)
#   2. podman engine configuration (/etc/containers/containers.conf, insecure local registry)
#   3. the build sandbox: the unprivileged user builds run as, with subordinate ids and a home
#      on a disk image of its own (docs/security.md)
#   4. uv, then `uv sync --all-packages` into <repo>/.venv
#   5. npm packages, only if the repository has a package.json
#   6. scripts/base-image.sh (the local base image, in the sandbox's image store)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

BINDERY_REGISTRY="${BINDERY_REGISTRY:-127.0.0.1:5000}"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

PACKAGES=(podman buildah runc skopeo debootstrap rabbitmq-server docker-registry git
          chromium chromium-driver iptables curl openssl ca-certificates slirp4netns uidmap
          e2fsprogs acl supervisor podman-compose haproxy)

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (Bindery drives podman and RabbitMQ as root)"

# TLS is intercepted on these machines: every client must trust the host bundle.
if [ -f "$CA_BUNDLE" ]; then
    export SSL_CERT_FILE="${SSL_CERT_FILE:-$CA_BUNDLE}"
    export PIP_CERT="${PIP_CERT:-$CA_BUNDLE}"
    export NODE_EXTRA_CA_CERTS="${NODE_EXTRA_CA_CERTS:-$CA_BUNDLE}"
fi
export DEBIAN_FRONTEND=noninteractive

is_installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }

apt_install() {
    # Never let package scripts start daemons (rabbitmq-server and docker-registry would
    # come up on 0.0.0.0 with Debian's config); scripts/infra.sh starts them our way.
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    { apt-get update -q && apt-get install -y -q "$@"; } || rc=$?
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    return "$rc"
}

# --- 1. Debian packages -------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do is_installed "$p" || missing+=("$p"); done
if [ -f package.json ] && ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
if ! command -v python3 >/dev/null 2>&1; then missing+=(python3 python3-venv python3-pip); fi
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}"
else
    log "Debian packages present"
fi

# --- 2. podman engine configuration -------------------------------------------------------
# runc (crun fails: cgroups hybrid mode) and ulimits below the sandbox's hard limit.
install_file() {  # install_file SRC DEST: copy if different, backing up a different file once
    local src="$1" dest="$2"
    mkdir -p "$(dirname "$dest")"
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        return 0
    fi
    if [ -f "$dest" ] && [ ! -e "$dest.bindery-orig" ]; then
        cp -p "$dest" "$dest.bindery-orig"
        log "backed up $dest to $dest.bindery-orig"
    fi
    install -m 0644 "$src" "$dest"
    log "wrote $dest"
}
install_file "$REPO/config/containers.conf" /etc/containers/containers.conf

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
cat > "$tmp" <<EOF
# Written by Bindery's scripts/install.sh: the local registry speaks plain HTTP on loopback.
[[registry]]
location = "$BINDERY_REGISTRY"
insecure = true
EOF
install_file "$tmp" /etc/containers/registries.conf.d/50-bindery.conf

# --- 3. the build sandbox -----------------------------------------------------------------
# Builds run rootless podman as this user (services/builder/.../sandbox.py): a repository's
# Dockerfile or postBuild then has an unprivileged user's rights on the host, not root's.
BUILD_USER="${BINDERY_BUILD_USER:-bindery-build}"
BUILD_HOME="/var/lib/$BUILD_USER"
BUILD_DISK_IMAGE="/var/lib/$BUILD_USER.ext4"
if ! id "$BUILD_USER" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$BUILD_HOME" --no-create-home \
        --shell /usr/sbin/nologin "$BUILD_USER"
    log "created user $BUILD_USER"
fi
# Rootless podman maps a container's users to 65536 subordinate ids of the user's own.
for ids in /etc/subuid /etc/subgid; do
    touch "$ids"
    if ! grep -q "^$BUILD_USER:" "$ids"; then
        first=$(awk -F: 'BEGIN { n = 100000 } $2 + $3 > n { n = $2 + $3 } END { print n }' "$ids")
        echo "$BUILD_USER:$first:65536" >> "$ids"
        log "gave $BUILD_USER subordinate ids $first-$((first + 65535)) in $ids"
    fi
done
# The sandbox's home (its image store, layer cache, build contexts) is a filesystem of its own:
# builds filling it fail with 'too_large' and never fill the disk RabbitMQ and the sessions use.
# Sparse: it takes only what builds write. BINDERY_BUILD_DISK sets its size on creation.
if ! mountpoint -q "$BUILD_HOME"; then
    if [ ! -f "$BUILD_DISK_IMAGE" ]; then
        half_free=$(( $(df --output=avail -B1 /var/lib | tail -1) / 2 ))
        size="${BINDERY_BUILD_DISK:-$(( half_free < 64 * 1024**3 ? half_free : 64 * 1024**3 ))}"
        truncate -s "$size" "$BUILD_DISK_IMAGE"
        mkfs.ext4 -q -F -m 0 -L bindery-build "$BUILD_DISK_IMAGE"
        log "made the build disk $BUILD_DISK_IMAGE ($(numfmt --to=iec "$size"))"
    fi
    # Whatever the user still runs (podman's pause process) holds the directory underneath.
    pkill -KILL -u "$BUILD_USER" 2>/dev/null || true
    mkdir -p "$BUILD_HOME"
    # Not nodev or nosuid: rootless runc remounts bind mounts read-only and cannot drop
    # flags the mount is locked with (EPERM).
    mount -o loop "$BUILD_DISK_IMAGE" "$BUILD_HOME"
    log "mounted $BUILD_DISK_IMAGE at $BUILD_HOME"
fi
install -d -m 0700 -o "$BUILD_USER" -g "$BUILD_USER" "$BUILD_HOME" "$BUILD_HOME/tmp" \
    "$BUILD_HOME/.config" "$BUILD_HOME/.config/containers"
cat > "$tmp" <<'EOF'
# Written by Bindery's scripts/install.sh for the build sandbox's rootless podman.
[storage]
driver = "overlay"
EOF
install_file "$tmp" "$BUILD_HOME/.config/containers/storage.conf"
cat > "$tmp" <<'EOF'
# Written by Bindery's scripts/install.sh: no systemd session for the sandbox user, so cgroups
# are the builder's (it puts each build in a cgroup of its own) and events go to a file. Build
# steps may reach the host's loopback (10.0.2.2) through slirp4netns: scripts/isolation.sh
# refuses all of it but the builders' package index forwarders.
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
network_cmd_options = ["allow_host_loopback=true"]
EOF
install_file "$tmp" "$BUILD_HOME/.config/containers/containers.conf"
chown -R "$BUILD_USER:$BUILD_USER" "$BUILD_HOME/.config"

# The services that need no root run as this user (scripts/services.sh: UNPRIVILEGED).
SERVICE_USER=bindery
SERVICE_HOME="/var/lib/$SERVICE_USER"
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$SERVICE_HOME" --create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER"
    log "created user $SERVICE_USER"
fi
install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$SERVICE_HOME"
# The resolver's `git ls-remote` of a local profile's repository (file://, on this machine's
# disk, owned by whoever made it): git refuses a repository its user does not own unless
# safe.directory says otherwise. Outside the local profile the resolver refuses file:// anyway.
cat > "$tmp" <<'EOF'
# Written by Bindery's scripts/install.sh: the resolver reads local repositories of any owner.
[safe]
	directory = *
EOF
install_file "$tmp" "$SERVICE_HOME/.gitconfig"
# --- 4. uv and the Python workspace -------------------------------------------------------
find_uv() {
    if command -v uv >/dev/null 2>&1; then
        UV=(uv)
    elif python3 -m uv --version >/dev/null 2>&1; then
        UV=(python3 -m uv)
    else
        return 1
    fi
}
if ! find_uv; then
    log "installing uv"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip python3-venv
    fi
    python3 -m pip install -q uv \
        || python3 -m pip install -q --break-system-packages uv \
        || python3 -m pip install -q --user --break-system-packages uv
    hash -r
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
    find_uv || die "uv installed but not found on PATH"
fi

# Newer uv names native TLS UV_SYSTEM_CERTS (UV_NATIVE_TLS still works but warns).
if "${UV[@]}" sync --help 2>/dev/null | grep -q UV_SYSTEM_CERTS; then
    export UV_SYSTEM_CERTS=1
else
    export UV_NATIVE_TLS=1
fi

if [ -f pyproject.toml ]; then
    # No managed-Python downloads here (GitHub is unreachable): use an installed python3.
    export UV_PYTHON_DOWNLOADS=never
    log "uv sync --all-packages"
    "${UV[@]}" sync --all-packages
else
    log "no pyproject.toml yet: skipping uv sync"
fi

# The service user runs the checkout's code with the workspace's interpreter: it must be able
# to enter every directory down to them.
# A Python under /root (pyenv; 0700) gets the user search permission on exactly the directories
# it lacks it on, as an ACL: no other user gains anything, and /root's listing stays closed.
python_prefix="$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')"
for target in "$REPO" "$python_prefix"; do
    IFS=/ read -ra parts <<< "${target#/}"
    dir=""
    for part in "${parts[@]}"; do
        dir="$dir/$part"
        if ! setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups test -x "$dir"; then
            setfacl -m "u:$SERVICE_USER:x" "$dir"
            log "gave $SERVICE_USER search permission on $dir (on the way to $target)"
        fi
    done
done

# --- 5. npm -------------------------------------------------------------------------------
if [ -f package.json ]; then
    if [ -f package-lock.json ]; then
        if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
            log "npm ci"
            npm ci --no-audit --no-fund
            touch node_modules
        fi
    else
        log "npm install"
        npm install --no-audit --no-fund
    fi
fi

# --- 6. local base image ------------------------------------------------------------------
if [ -f scripts/base-image.sh ]; then
    log "scripts/base-image.sh"
    bash scripts/base-image.sh
fi

log "done"
