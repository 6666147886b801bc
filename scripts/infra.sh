#!/usr/bin/env bash
# Bindery's shared infrastructure, everything bound to 127.0.0.1:
#   RabbitMQ     127.0.0.1:5672 (config/rabbitmq.conf); epmd 4369 and distribution 25672 on loopback
#   registry     $BINDERY_REGISTRY (default 127.0.0.1:5000), config/registry.yml, data in .bindery/registry
#   podman nodes unix:///run/bindery/node-N.sock, N = 1..$BINDERY_NODE_COUNT (default 1)
#                node-1 uses podman's default storage (where `podman build` puts images);
#                node-N>1 has its own storage under .bindery/nodes/node-N.
#   isolation    iptables rules keeping sessions off this host and each other (scripts/isolation.sh)
#
# usage: scripts/infra.sh up|down|status|restart
#        scripts/infra.sh vhost NAME          create a vhost, grant guest full permissions
#        scripts/infra.sh vhost-delete NAME   delete a vhost (harmless if absent)
#        scripts/infra.sh access [NAME [DIR]] in vhost NAME (default /, which must exist): declare the
#                                             topology and create or refresh one RabbitMQ user per
#                                             service, allowed only what it uses; each service's
#                                             AMQP URL goes to DIR/<service>.url, mode 0600
#                                             (default .bindery/amqp). See libs/src/bindery/bus/access.py.
#        The guest user stays, for administration and tests, usable from loopback only.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$REPO/.bindery"
RUN="$STATE/run"
LOGS="$STATE/logs"
SOCKDIR=/run/bindery

BINDERY_REGISTRY="${BINDERY_REGISTRY:-127.0.0.1:5000}"
BINDERY_NODE_COUNT="${BINDERY_NODE_COUNT:-1}"
WAIT_SECONDS="${BINDERY_INFRA_WAIT:-60}"

# RabbitMQ environment, used by the server and by every CLI call (rabbitmqctl/-diagnostics).
# The Debian wrapper re-runs the tools with `su rabbitmq` without a login shell, so these pass
# through. RabbitMQ 3.10 takes RABBITMQ_CONFIG_FILE with its .conf extension.
export RABBITMQ_CONFIG_FILE="$REPO/config/rabbitmq.conf"
export ERL_EPMD_ADDRESS=127.0.0.1                 # epmd listens on loopback only
export RABBITMQ_DIST_PORT=25672                   # inter-node/CLI distribution port ...
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"  # ... on loopback
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"  # CLI's own dist port too

log() { printf '[infra] %s\n' "$*"; }
die() { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$RUN" "$LOGS" "$SOCKDIR"

# --- process helpers ----------------------------------------------------------------------
pid_of() {  # pid_of PIDFILE PATTERN -> prints pid if the process is alive and matches
    local f="$1" pat="$2" pid
    [ -f "$f" ] || return 1
    pid="$(cat "$f" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pat" || return 1
    echo "$pid"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE PATTERN: TERM, then KILL after 10 s
    local name="$1" f="$2" pat="$3" pid i
    if pid="$(pid_of "$f" "$pat")"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop in 10 s: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
}

wait_for() {  # wait_for DESCRIPTION COMMAND...: retry for WAIT_SECONDS
    local what="$1"; shift
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.25
    done
}

listen_addrs() {  # local addresses listening on TCP port $1
    ss -Hltn "sport = :$1" 2>/dev/null | awk '{print $4}' | sed 's/:[0-9]*$//' | sort -u
}

check_loopback() {  # check_loopback PORT NAME: 0 if every listener on PORT is loopback
    local port="$1" name="$2" bad
    bad="$(listen_addrs "$port" | grep -vE '^(127\.0\.0\.1|\[::1\])$' || true)"
    if [ -n "$bad" ]; then
        log "WARNING: $name port $port listens on: $(echo "$bad" | tr '\n' ' ')"
        return 1
    fi
}

# --- RabbitMQ -----------------------------------------------------------------------------
rabbit_ping() { rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

rabbit_up() {
    [ -r "$RABBITMQ_CONFIG_FILE" ] || die "missing $RABBITMQ_CONFIG_FILE"
    command -v rabbitmq-server >/dev/null || die "rabbitmq-server not installed: run scripts/install.sh"
    # The server runs as user rabbitmq: it must be able to read the config where it lies.
    if ! su rabbitmq -s /bin/sh -c "test -r '$RABBITMQ_CONFIG_FILE'" 2>/dev/null; then
        install -D -m 0644 "$RABBITMQ_CONFIG_FILE" "$SOCKDIR/rabbitmq.conf"
        export RABBITMQ_CONFIG_FILE="$SOCKDIR/rabbitmq.conf"
    fi
    if rabbit_ping; then
        if check_loopback 5672 rabbitmq; then
            log "rabbitmq already running"
            return 0
        fi
        log "rabbitmq runs with a foreign configuration: restarting it with config/rabbitmq.conf"
        rabbitmqctl -q shutdown >/dev/null 2>&1 || rabbitmqctl -q stop >/dev/null 2>&1 || true
    fi
    # An epmd left over from a tool started without ERL_EPMD_ADDRESS listens on 0.0.0.0.
    if ! check_loopback 4369 epmd >/dev/null 2>&1; then
        epmd -kill >/dev/null 2>&1 || true
    fi
    log "starting rabbitmq"
    rabbitmq-server -detached >> "$LOGS/rabbitmq-startup.log" 2>&1 \
        || die "rabbitmq-server -detached failed; see $LOGS/rabbitmq-startup.log and /var/log/rabbitmq/"
    if ! wait_for "rabbitmq" rabbit_ping; then
        tail -n 30 /var/log/rabbitmq/*.log 2>/dev/null || true
        die "rabbitmq did not answer within ${WAIT_SECONDS}s"
    fi
    rabbitmqctl -q await_startup --timeout "$WAIT_SECONDS" >/dev/null
    check_loopback 5672 rabbitmq || die "rabbitmq must listen on 127.0.0.1:5672 only"
    check_loopback 25672 "erlang distribution" || true
    check_loopback 4369 epmd || true
    log "rabbitmq up on amqp://guest:guest@127.0.0.1:5672/"
}

rabbit_down() {
    if rabbit_ping; then
        log "stopping rabbitmq"
        rabbitmqctl -q shutdown >/dev/null 2>&1 || rabbitmqctl -q stop >/dev/null 2>&1 || true
    fi
    # epmd outlives the node; stop it when no Erlang node is registered any more.
    if command -v epmd >/dev/null && ! epmd -names 2>/dev/null | grep -q '^name '; then
        epmd -kill >/dev/null 2>&1 || true
    fi
}

rabbit_status() {
    if rabbit_ping; then
        echo "rabbitmq   running  amqp 127.0.0.1:5672 (listeners: $(listen_addrs 5672 | tr '\n' ' '))"
    else
        echo "rabbitmq   stopped"
        return 1
    fi
}

# --- registry -----------------------------------------------------------------------------
REGISTRY_PID="$RUN/registry.pid"
registry_ping() { curl -sf -o /dev/null "http://$BINDERY_REGISTRY/v2/"; }

registry_up() {
    if pid_of "$REGISTRY_PID" registry >/dev/null; then
        wait_for registry registry_ping || die "registry process alive but /v2/ does not answer"
        log "registry already running"
        return 0
    fi
    command -v docker-registry >/dev/null || die "docker-registry not installed: run scripts/install.sh"
    local port="${BINDERY_REGISTRY##*:}"
    if registry_ping && curl -sfI "http://$BINDERY_REGISTRY/v2/" | grep -qi '^docker-distribution-api-version: registry/2'; then
        # Started from another checkout of Bindery (its pid file lives there): same service.
        log "registry already running (started elsewhere)"
        return 0
    fi
    if [ -n "$(listen_addrs "$port")" ]; then
        die "port $port is taken by another process (Debian's docker-registry service?): $(ss -Hltnp "sport = :$port")"
    fi
    mkdir -p "$STATE/registry"
    log "starting registry on $BINDERY_REGISTRY"
    REGISTRY_HTTP_ADDR="$BINDERY_REGISTRY" \
    REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$STATE/registry" \
        setsid nohup docker-registry serve "$REPO/config/registry.yml" \
        >> "$LOGS/registry.log" 2>&1 < /dev/null &
    echo $! > "$REGISTRY_PID"
    if ! wait_for registry registry_ping; then
        tail -n 20 "$LOGS/registry.log" >&2 || true
        die "registry did not answer http://$BINDERY_REGISTRY/v2/ within ${WAIT_SECONDS}s"
    fi
    log "registry up on http://$BINDERY_REGISTRY/"
}

registry_down() { stop_pidfile registry "$REGISTRY_PID" registry; }

registry_status() {
    local pid
    if pid="$(pid_of "$REGISTRY_PID" registry)" && registry_ping; then
        echo "registry   running  pid $pid  http://$BINDERY_REGISTRY/v2/"
    else
        echo "registry   stopped"
        return 1
    fi
}

# --- podman API nodes ---------------------------------------------------------------------
node_sock() { echo "$SOCKDIR/node-$1.sock"; }
node_pidfile() { echo "$RUN/node-$1.pid"; }
node_ping() { [ "$(curl -sf --max-time 5 --unix-socket "$(node_sock "$1")" http://d/v1.41/_ping)" = OK ]; }

node_up() {
    local n="$1" sock pidfile flags=()
    sock="$(node_sock "$n")"; pidfile="$(node_pidfile "$n")"
    if pid_of "$pidfile" "system service" >/dev/null; then
        wait_for "node-$n" node_ping "$n" || die "node-$n process alive but $sock does not answer"
        log "node-$n already running"
        return 0
    fi
    if node_ping "$n"; then
        log "node-$n already running (started elsewhere)"
        return 0
    fi
    command -v podman >/dev/null || die "podman not installed: run scripts/install.sh"
    [ -f /etc/containers/containers.conf ] || [ -n "${CONTAINERS_CONF:-}" ] \
        || die "no /etc/containers/containers.conf (runc, ulimits): run scripts/install.sh"
    if [ "$n" -gt 1 ]; then
        # A separate image store, run root and tmp dir (podman's state/lock dir): a separate node.
        mkdir -p "$STATE/nodes/node-$n/root" "$SOCKDIR/node-$n/runroot" "$SOCKDIR/node-$n/tmp"
        flags=(--root "$STATE/nodes/node-$n/root" --runroot "$SOCKDIR/node-$n/runroot"
               --tmpdir "$SOCKDIR/node-$n/tmp")
    fi
    rm -f "$sock"
    log "starting podman node-$n on unix://$sock"
    # From the run dir: conmon records a session's OOM kill as a file named `oom` in its
    # working directory, which must not land in the checkout.
    (cd "$RUN" && exec setsid nohup podman "${flags[@]}" system service --time=0 "unix://$sock" \
        >> "$LOGS/node-$n.log" 2>&1 < /dev/null) &
    echo $! > "$pidfile"
    if ! wait_for "node-$n" node_ping "$n"; then
        tail -n 20 "$LOGS/node-$n.log" >&2 || true
        die "node-$n did not answer on $sock within ${WAIT_SECONDS}s"
    fi
    log "node-$n up on unix://$sock"
}

node_down() {
    stop_pidfile "node-$1" "$(node_pidfile "$1")" "system service"
    rm -f "$(node_sock "$1")"
}

node_status() {
    local pid
    if pid="$(pid_of "$(node_pidfile "$1")" "system service")" && node_ping "$1"; then
        echo "node-$1     running  pid $pid  unix://$(node_sock "$1")"
    else
        echo "node-$1     stopped"
        return 1
    fi
}

all_nodes() {  # configured nodes plus any still running from an earlier, larger count
    local n
    seq 1 "$BINDERY_NODE_COUNT"
    for f in "$RUN"/node-*.pid; do
        [ -e "$f" ] || continue
        n="${f##*/node-}"; n="${n%.pid}"
        [ "$n" -gt "$BINDERY_NODE_COUNT" ] && echo "$n"
    done
    return 0
}

# --- commands -----------------------------------------------------------------------------
cmd_up() {
    rabbit_up
    # Sticky builds: the builders' x-consistent-hash exchange (libs/src/bindery/bus/topology.py).
    rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange >/dev/null
    registry_up
    local n
    for n in $(seq 1 "$BINDERY_NODE_COUNT"); do node_up "$n"; done
    "$REPO/scripts/isolation.sh" up  # sessions reach neither this host nor each other
    log "infrastructure up"
}

cmd_down() {
    local n
    for n in $(all_nodes | sort -un); do node_down "$n"; done
    registry_down
    rabbit_down
    log "infrastructure down"
}

cmd_status() {
    local rc=0 n
    rabbit_status || rc=1
    registry_status || rc=1
    for n in $(all_nodes | sort -un); do node_status "$n" || rc=1; done
    "$REPO/scripts/isolation.sh" status || rc=1
    return "$rc"
}

cmd_vhost() {
    local name="${1:?usage: infra.sh vhost NAME}"
    rabbitmqctl -q list_vhosts name 2>/dev/null | grep -qxF -- "$name" \
        || rabbitmqctl -q add_vhost "$name" >/dev/null
    rabbitmqctl -q set_permissions -p "$name" guest '.*' '.*' '.*' >/dev/null
    log "vhost $name ready (guest has full permissions)"
}

cmd_vhost_delete() {
    local name="${1:?usage: infra.sh vhost-delete NAME}"
    if rabbitmqctl -q list_vhosts name 2>/dev/null | grep -qxF -- "$name"; then
        rabbitmqctl -q delete_vhost "$name" >/dev/null
    fi
    log "vhost $name absent"
}

cmd_access() {
    local name="${1:-/}" dir="${2:-$STATE/amqp}" python="$REPO/.venv/bin/python"
    [ -x "$python" ] || die "no $python: run scripts/install.sh"
    # One rabbitmqctl import_definitions: users, permissions, topic permissions, topology.
    "$python" -m bindery.bus.access setup "$name" "$dir" >/dev/null \
        || die "could not set up the services' users in vhost $name"
    log "vhost $name: one user per service, URLs in $dir"
}

[ "$(id -u)" = 0 ] || die "run as root"
case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    restart) cmd_down; cmd_up ;;
    status) cmd_status ;;
    vhost) shift; cmd_vhost "$@" ;;
    vhost-delete) shift; cmd_vhost_delete "$@" ;;
    access) shift; cmd_access "$@" ;;
    *) echo "usage: $0 up|down|restart|status|vhost NAME|vhost-delete NAME|access [NAME [DIR]]" >&2; exit 2 ;;
esac
