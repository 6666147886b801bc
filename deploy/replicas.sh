#!/usr/bin/env bash
# compose.yaml's way to run several replicas of a service in one container: Debian's
# podman-compose (1.0.3) accepts `--scale` and ignores it, so BINDERY_BUILDERS and
# BINDERY_SCHEDULERS say how many processes of the builder and the scheduler their container
# runs. usage: deploy/replicas.sh SERVICE COUNT
#
# Replica i (from 0) listens for /health on BINDERY_HEALTH_PORT + 100 * i (a builder's replica
# name, and so its queue of sticky builds, comes from its host name and that port). A replica
# that ends is started again a second later, the others untouched, as scripts/services.sh's
# supervisor does on a host; SIGTERM (podman stop) is passed on to all, and the container ends
# once they have.
set -uo pipefail
service=${1:?usage: replicas.sh SERVICE COUNT} count=${2:-1}
base_port=${BINDERY_HEALTH_PORT:?replicas.sh: set BINDERY_HEALTH_PORT}

declare -A replica_of=()  # pid -> replica number
start() {
    BINDERY_HEALTH_PORT=$((base_port + 100 * $1)) python -m "bindery.$service" &
    replica_of[$!]=$1
}
stop() {
    kill -TERM "${!replica_of[@]}" 2>/dev/null
    wait
    exit 0
}
trap stop TERM INT

for ((i = 0; i < count; i++)); do start "$i"; done
while :; do
    ended=""
    wait -n -p ended
    [[ -n $ended && -n ${replica_of[$ended]:-} ]] || continue
    replica=${replica_of[$ended]}
    unset "replica_of[$ended]"
    echo "replicas.sh: $service replica $replica ended; starting it again" >&2
    sleep 1
    start "$replica"
done
