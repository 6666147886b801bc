#!/usr/bin/env bash
# Makes the network compose.yaml's containers share (idempotent) and prints the setting that
# names it, BINDERY_COMPOSE_NETWORK=NAME, on stdout. usage: compose-network.sh [NAME]
# (default bindery-compose). `podman-compose down` leaves networks alone: `podman network rm
# NAME` removes it once no container uses it.
#
# Why not podman-compose's own network: its bridge would be named podman<N>, and on a host where
# scripts/isolation.sh runs (`make up`, `make test`), every podman+ bridge is a session bridge,
# fenced off from the host (aardvark-dns on the bridge's gateway included) and from itself (no
# container on it could reach another). podman 4.3 cannot name a bridge at `network create`,
# and podman-compose 1.0.3 passes no options to it; netavark takes the name from the network's
# file, so it is set there before any container joins.
set -euo pipefail
name=${1:-bindery-compose}
if ! podman network exists "$name"; then
    podman network create --label io.bindery.compose=true "$name" >/dev/null
    bridge=bc-$(printf %s "$name" | sha256sum | cut -c1-8)
    sed -i "s/\"network_interface\": \"[^\"]*\"/\"network_interface\": \"$bridge\"/" \
        "/etc/containers/networks/$name.json"
    echo "[compose-network] made $name (bridge $bridge)" >&2
fi
echo "BINDERY_COMPOSE_NETWORK=$name"
