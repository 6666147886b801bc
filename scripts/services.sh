#!/usr/bin/env bash
# Start/stop Bindery's Python services as background processes on this machine.
#   logs: .bindery/logs/<service>.log   pids: .bindery/run/<service>.pid
#   environment: .bindery/env (created once with BINDERY_PROFILE=local and a random
#   BINDERY_SESSION_SECRET; never overwritten; edit it to configure the services)
#   broker: each service connects as a RabbitMQ user of its own, allowed only what it uses
#   (libs/src/bindery/bus/access.py); `up` creates or refreshes them in vhost / with
#   `scripts/infra.sh access` and gives each service its URL from .bindery/amqp/<service>.url.
#   BINDERY_SESSION_SECRET reaches only the services in SECRET_HOLDERS.
#   users: the services in UNPRIVILEGED run as the system user bindery (scripts/install.sh),
#   the others as root (why: beside the list).
#
# usage: scripts/services.sh up|down|restart|status
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
STATE="$REPO/.bindery"
RUN="$STATE/run"
LOGS="$STATE/logs"
ENV_FILE="$STATE/env"
AMQP_DIR="$STATE/amqp"
PYTHON="$REPO/.venv/bin/python"
WAIT_SECONDS="${BINDERY_SERVICES_WAIT:-60}"

# Start order and health endpoints (gateway is the public one; the others are internal).
SERVICES=(resolver builder scheduler culler archiver gateway)
declare -A HEALTH_URL=(
    [resolver]=http://127.0.0.1:8591/health
    [builder]=http://127.0.0.1:8592/health
    [scheduler]=http://127.0.0.1:8593/health
    [culler]=http://127.0.0.1:8594/health
    [archiver]=http://127.0.0.1:8595/health
    [gateway]=http://127.0.0.1:8585/health
)
# The services that make or check session tokens, or present them to sessions' Jupyter (the
# culler); bindery.bus.access.SESSION_SECRET_HOLDERS, and tests/unit/libs/test_access.py checks
# that both lists agree.
SECRET_HOLDERS=(gateway scheduler culler)
# Who runs as whom. Root stays with those that need it: the builder sets up the build sandbox
# (setpriv to the sandbox user, cgroups); the scheduler and the gateway use the podman node
# sockets in /run/bindery (root's; whoever can use them can do anything podman can, so access to
# them is root-equivalent), and so does the culler, which lists the sessions through them at
# start to rebuild its view. The others run as SERVICE_USER (no capabilities, no new privileges)
# and get exactly what they need (give_to_user). tests/support/stack.py starts the same list
# (tests/unit/test_service_users.py checks that both agree).
SERVICE_USER=bindery
UNPRIVILEGED=(resolver archiver)

log() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$RUN" "$LOGS"

pid_of() {  # pid_of SERVICE -> pid if alive and really that service
    local f="$RUN/$1.pid" pid
    [ -f "$f" ] || return 1
    pid="$(cat "$f" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-m bindery\.$1" || return 1
    echo "$pid"
}

healthy() { curl -sf --max-time 2 -o /dev/null "${HEALTH_URL[$1]}"; }

ensure_env() {
    [ -f "$ENV_FILE" ] && return 0
    local secret
    secret="$(openssl rand -hex 32 2>/dev/null || python3 -c 'import secrets; print(secrets.token_hex(32))')"
    umask 077
    cat > "$ENV_FILE" <<EOF
# Bindery service environment, read by scripts/services.sh (created once, never overwritten).
BINDERY_PROFILE=local
BINDERY_SESSION_SECRET=$secret
EOF
    log "created $ENV_FILE"
}

holds_secret() {
    local h
    for h in "${SECRET_HOLDERS[@]}"; do [ "$h" = "$1" ] && return 0; done
    return 1
}

unprivileged() {
    local u
    for u in "${UNPRIVILEGED[@]}"; do [ "$u" = "$1" ] && return 0; done
    return 1
}

load_env() {  # the operator's settings, in this shell
    set -a
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    # Each session on an origin of its own (<session>.localhost: browsers resolve every name
    # under localhost to loopback), unless the operator chose otherwise; empty: path mode.
    : "${BINDERY_SESSIONS_HOST=localhost:${BINDERY_PORT:-8585}}"
    set +a
}

user_home() { getent passwd "$SERVICE_USER" | cut -d: -f6; }

# How a service starts as SERVICE_USER: its groups only, no capabilities, and no way to gain
# any (setuid programs); HOME is set to the user's home beside it (git reads its config there).
AS_USER=(setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups --no-new-privs)

check_user() {  # the user exists and can run the services' code
    id "$SERVICE_USER" >/dev/null 2>&1 || die "no user $SERVICE_USER: run scripts/install.sh (make install)"
    HOME="$(user_home)" "${AS_USER[@]}" "$PYTHON" -c 'import bindery.service' 2>/dev/null \
        || die "$SERVICE_USER cannot run $PYTHON: run scripts/install.sh (make install)"
}

give_to_user() {  # give_to_user SERVICE: what SERVICE writes, made SERVICE_USER's (settings loaded)
    local archive
    if [ "$1" = archiver ]; then
        # Its daily files (the directory its settings name, relative to this checkout).
        archive="$("$PYTHON" -c 'from bindery.archiver.settings import ArchiverSettings as S
print(S().archive_dir)')"
        install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$archive"
        find "$archive" -maxdepth 1 -type f -name 'events-*.jsonl' \
            -exec chown "$SERVICE_USER:$SERVICE_USER" {} +
    fi
    # Spans, when they go to a file that every service appends to.
    if [ "${BINDERY_TRACE_EXPORTER:-}" = file ] && [ -n "${BINDERY_TRACE_FILE:-}" ]; then
        touch "$BINDERY_TRACE_FILE"
        chown "$SERVICE_USER:$SERVICE_USER" "$BINDERY_TRACE_FILE"
    fi
}

start() {  # start SERVICE in the background as its own broker user, with only its settings
    local s="$1" url
    url="$(cat "$AMQP_DIR/$s.url")"
    # Before the service's own process exists: until it execs, its pid is this script's, which
    # the health wait would take for a service that exited.
    if unprivileged "$s"; then (load_env; give_to_user "$s"); fi
    (
        local -a run=()
        load_env
        export BINDERY_AMQP_URL="$url" PYTHONUNBUFFERED=1
        holds_secret "$s" || unset BINDERY_SESSION_SECRET
        if unprivileged "$s"; then
            HOME="$(user_home)"
            run=("${AS_USER[@]}")
        fi
        # The log is opened here, by root: the service needs no right to it.
        exec setsid nohup "${run[@]}" "$PYTHON" -m "bindery.$s" >> "$LOGS/$s.log" 2>&1 < /dev/null
    ) &
    echo $! > "$RUN/$s.pid"
    log "started $s (pid $!)"
}

cmd_up() {
    [ -x "$PYTHON" ] || die "no $PYTHON: run scripts/install.sh (make install)"
    check_user
    ensure_env
    # Users, permissions and topology; kept passwords, so running services keep working. With
    # the operator's settings: the event log's retention, the broker's address.
    (load_env && "$REPO/scripts/infra.sh" access / "$AMQP_DIR") \
        || die "could not set up the services' broker users (is RabbitMQ up? make infra-up)"

    local s pid
    for s in "${SERVICES[@]}"; do
        if pid="$(pid_of "$s")"; then
            log "$s already running (pid $pid)"
            continue
        fi
        start "$s"
    done

    local deadline=$((SECONDS + WAIT_SECONDS)) pending=("${SERVICES[@]}") still
    while [ "${#pending[@]}" -gt 0 ]; do
        still=()
        for s in "${pending[@]}"; do
            if healthy "$s"; then
                continue
            fi
            if ! pid_of "$s" >/dev/null; then
                log "$s exited; last lines of $LOGS/$s.log:"
                tail -n 40 "$LOGS/$s.log" >&2 || true
                die "$s is not running"
            fi
            still+=("$s")
        done
        pending=("${still[@]+"${still[@]}"}")
        [ "${#pending[@]}" -eq 0 ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for s in "${pending[@]}"; do
                log "$s did not answer ${HEALTH_URL[$s]} within ${WAIT_SECONDS}s; last lines of $LOGS/$s.log:"
                tail -n 40 "$LOGS/$s.log" >&2 || true
            done
            die "unhealthy: ${pending[*]}"
        fi
        sleep 0.5
    done
    log "all services healthy"
}

cmd_down() {
    local s pid i pids=()
    for s in "${SERVICES[@]}"; do
        if pid="$(pid_of "$s")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            log "stopping $s (pid $pid)"
        fi
    done
    for i in $(seq 1 100); do
        local alive=0
        for pid in "${pids[@]+"${pids[@]}"}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]+"${pids[@]}"}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop in 10 s: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for s in "${SERVICES[@]}"; do rm -f "$RUN/$s.pid"; done
    # The sessions these services started go too: nothing a user did survives a session.
    local instance ids
    instance="$( (grep -E '^BINDERY_INSTANCE=' "$ENV_FILE" 2>/dev/null || true) | tail -n 1 | cut -d= -f2)"
    ids="$(podman ps -aq --filter "label=bindery.instance=${instance:-bindery}" 2>/dev/null || true)"
    if [ -n "$ids" ]; then
        log "removing $(echo "$ids" | wc -l) session container(s)"
        # shellcheck disable=SC2086 # one id per word
        podman rm -f -t 2 $ids >/dev/null 2>&1 || true
    fi
    log "services down"
}

cmd_status() {
    local s pid rc=0
    for s in "${SERVICES[@]}"; do
        if pid="$(pid_of "$s")"; then
            if healthy "$s"; then
                printf '%-10s running  pid %s  %s ok\n' "$s" "$pid" "${HEALTH_URL[$s]}"
            else
                printf '%-10s running  pid %s  %s NOT answering\n' "$s" "$pid" "${HEALTH_URL[$s]}"
                rc=1
            fi
        else
            printf '%-10s stopped\n' "$s"
            rc=1
        fi
    done
    return "$rc"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    restart) cmd_down; cmd_up ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|restart|status" >&2; exit 2 ;;
esac
