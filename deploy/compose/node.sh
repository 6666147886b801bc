#!/bin/sh
# A session node of compose.yaml (`node`, `node2`): podman's API service, as scripts/infra.sh
# runs each node on a host (`podman system service`), in a privileged container of its own, with
# its image store on a volume of its own. Sessions run in it; the services reach its API through
# the socket NAME.sock on the volume they share (/run/bindery) and the sessions' ports at the
# node's address on the compose network (BINDERY_NODES: `?publish=HOST`).
#
# usage: deploy/compose/node.sh NAME (the node's name in BINDERY_NODES, e.g. node-1)
# In: BINDERY_REGISTRY (the name images are pulled by, a plain-HTTP registry on the compose
# network). Out: the socket, its group the services' (bindery, the user they run as) and no one
# else's, and scripts/isolation.sh's rules in the node's network namespace: sessions reach
# neither the node nor each other, nor the compose network's private addresses (the broker, the
# registry, the services): only the internet on the egress ports.
set -eu
name=${1:?usage: node.sh NAME}
cd "$(dirname "$0")/../.."
mkdir -p /etc/containers/registries.conf.d
cat > /etc/containers/registries.conf.d/50-bindery.conf <<CONF
[[registry]]
location = "$BINDERY_REGISTRY"
insecure = true
CONF
scripts/isolation.sh up
# The services' group owns the directory, and, by its set-group-id bit, each node's socket in
# it; podman makes the socket as its umask says (owner only may connect), so its mode is set
# once it is there. A umask for podman would apply to its sessions' files too.
chown root:bindery /run/bindery
chmod 2770 /run/bindery
socket=/run/bindery/$name.sock
rm -f "$socket"
(until [ -S "$socket" ]; do sleep 0.1; done; chmod 0660 "$socket") &
exec podman system service --time=0 "unix://$socket"
