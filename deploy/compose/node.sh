#!/bin/sh
# compose.yaml's session node: podman's API service, as scripts/infra.sh runs each node on a
# host (`podman system service`), in a privileged container of its own, with its image store on
# a volume. Sessions run in it; the services reach its API through the socket on the volume they
# share (/run/bindery/node-1.sock) and the sessions' ports at the node's address on the compose
# network (BINDERY_NODES: `?publish=node`).
#
# In: BINDERY_REGISTRY (the name images are pulled by, a plain-HTTP registry on the compose
# network). Out: the socket, and scripts/isolation.sh's rules in the node's network namespace:
# sessions reach neither the node nor each other, nor the compose network's private addresses
# (the broker, the registry, the services): only the internet on the egress ports.
set -eu
cd "$(dirname "$0")/../.."
mkdir -p /etc/containers/registries.conf.d
cat > /etc/containers/registries.conf.d/50-bindery.conf <<CONF
[[registry]]
location = "$BINDERY_REGISTRY"
insecure = true
CONF
scripts/isolation.sh up
rm -f /run/bindery/node-1.sock
exec podman system service --time=0 unix:///run/bindery/node-1.sock
