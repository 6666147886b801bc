#!/usr/bin/env bash
# Run Bindery's Python services on this machine under supervisord (Debian's `supervisor`), which
# restarts a service that crashes or is killed, as often as it takes: a launch waits in its
# stage's queue for the seconds that takes instead of forever (the gateway's /health says which
# stage is missing meanwhile).
#   Why supervisord and not systemd units: this machine's PID 1 is not systemd, and one
#   supervisor everywhere is one configuration that the tests run (tests/integration/
#   test_supervised.py); where systemd runs it starts supervisord like any other program.
#   supervisord: its configuration (written by `up` from SERVICES), socket and pid file are in
#   .bindery/supervisor/; its own log is .bindery/logs/supervisord.log.
#   logs: .bindery/logs/<service>.log (supervisord writes them; `make logs` follows them)
#   environment: .bindery/env (created once with BINDERY_PROFILE=local and a random
#   BINDERY_SESSION_SECRET; never overwritten; edit it to configure the services: every start,
#   and every restart after a crash, reads it again). docs/configuration.md lists every setting.
#   broker: each service connects as a RabbitMQ user of its own, allowed only what it uses
#   (libs/src/bindery/bus/access.py); `up` creates or refreshes them in vhost BINDERY_VHOST
#   (default /) with `scripts/infra.sh access` and gives each service its URL from
#   .bindery/amqp/<service>.url.
#   BINDERY_SESSION_SECRET reaches only the services in SECRET_HOLDERS.
#   users: the services in UNPRIVILEGED run as the system user bindery (scripts/install.sh),
#   the others as root (why: beside the list).
#   ports: the gateway on BINDERY_PORT (default 8585), the others' /health on the next ports
#   after it: BINDERY_PORT + 6 + their place in SERVICES (8591-8595).
#   BINDERY_STATE_DIR (default <repo>/.bindery) moves all of the above, so a second instance
#   (tests/integration/test_supervised.py) runs beside the one `make up` runs.
#
# usage: scripts/services.sh up|down|restart|status
#        scripts/services.sh run SERVICE   (what supervisord runs: one service, in the foreground)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
STATE="${BINDERY_STATE_DIR:-$REPO/.bindery}"
RUN="$STATE/run"
LOGS="$STATE/logs"
ENV_FILE="$STATE/env"
AMQP_DIR="$STATE/amqp"
SUPERVISOR="$STATE/supervisor"
SUPERVISOR_CONF="$SUPERVISOR/supervisord.conf"
VHOST="${BINDERY_VHOST:-/}"
PYTHON="$REPO/.venv/bin/python"
WAIT_SECONDS="${BINDERY_SERVICES_WAIT:-60}"
CTL=(supervisorctl -c "$SUPERVISOR_CONF")

# Start order (gateway last: the public one, its health ports before it).
SERVICES=(resolver builder scheduler culler archiver gateway)
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

ensure_env() {
    [ -f "$ENV_FILE" ] && return 0
    local secret
    secret="$(openssl rand -hex 32 2>/dev/null || python3 -c 'import secrets; print(secrets.token_hex(32))')"
    (
        umask 077
        cat > "$ENV_FILE" <<EOF
# Bindery service environment, read by scripts/services.sh (created once, never overwritten).
# Every BINDERY_* setting, its default and meaning: docs/configuration.md.
BINDERY_PROFILE=local
BINDERY_SESSION_SECRET=$secret
EOF
    )
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

gateway_port() { (load_env; echo "${BINDERY_PORT:-8585}"); }

health_port() {  # health_port SERVICE GATEWAY_PORT
    local i
    [ "$1" = gateway ] && { echo "$2"; return; }
    for i in "${!SERVICES[@]}"; do
        [ "${SERVICES[$i]}" = "$1" ] && { echo $(($2 + 6 + i)); return; }
    done
    die "no service $1"
}

health_url() { echo "http://127.0.0.1:$(health_port "$1" "$2")/health"; }

healthy() { curl -sf --max-time 2 -o /dev/null "$(health_url "$1" "$2")"; }

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

cmd_run() {  # run SERVICE: become it, as its own broker user with only its settings (supervisord)
    local s="${1:?usage: services.sh run SERVICE}" port
    local -a run=()
    port="$(gateway_port)"
    load_env
    export BINDERY_AMQP_URL
    BINDERY_AMQP_URL="$(cat "$AMQP_DIR/$s.url")"
    export BINDERY_HEALTH_PORT
    BINDERY_HEALTH_PORT="$(health_port "$s" "$port")"
    export PYTHONUNBUFFERED=1
    holds_secret "$s" || unset BINDERY_SESSION_SECRET
    if unprivileged "$s"; then
        give_to_user "$s"
        HOME="$(user_home)"
        run=("${AS_USER[@]}")
    fi
    # exec: the service is supervisord's own child, so its death is seen and it is restarted.
    exec "${run[@]}" "$PYTHON" -m "bindery.$s"
}

write_config() {  # supervisord's configuration, from SERVICES (written anew by every `up`)
    local i s tmp="$SUPERVISOR_CONF.tmp"
    {
        cat <<EOF
; Written by scripts/services.sh up: edit that script, not this file.
[unix_http_server]
file=$SUPERVISOR/supervisor.sock
chmod=0700

[supervisorctl]
serverurl=unix://$SUPERVISOR/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisord]
logfile=$LOGS/supervisord.log
pidfile=$SUPERVISOR/supervisord.pid
childlogdir=$LOGS
directory=$REPO
EOF
        for i in "${!SERVICES[@]}"; do
            s="${SERVICES[$i]}"
            # priority: started in SERVICES' order. autorestart: after any exit, kill -9 included. startsecs/startretries: a service
            # that dies within 5 s of starting (the broker still down) is tried again with a
            # growing pause (1 s, 2 s, ...) 30 times, minutes of outage, before supervisord
            # gives up on it (FATAL, which `status` shows). stopwaitsecs: SIGTERM, then
            # SIGKILL to its process group after 10 s, as `down` always allowed.
            cat <<EOF

[program:$s]
command=$REPO/scripts/services.sh run $s
directory=$REPO
environment=BINDERY_STATE_DIR="$STATE"
priority=$((100 + i))
autostart=true
autorestart=true
startsecs=5
startretries=30
stopsignal=TERM
stopwaitsecs=10
killasgroup=true
redirect_stderr=true
stdout_logfile=$LOGS/$s.log
stdout_logfile_maxbytes=50MB
stdout_logfile_backups=5
EOF
        done
    } > "$tmp"
    mv "$tmp" "$SUPERVISOR_CONF"
}

supervisor_up() { [ -S "$SUPERVISOR/supervisor.sock" ] && "${CTL[@]}" pid >/dev/null 2>&1; }

state_of() {  # state_of SERVICE -> RUNNING, STARTING, BACKOFF, FATAL, STOPPED, EXITED...
    "${CTL[@]}" status "$1" 2>/dev/null | awk '{print $2}'
}

pid_of() { "${CTL[@]}" pid "$1" 2>/dev/null; }

stop_unsupervised() {
    # Services an earlier services.sh started as plain background processes (pid files in
    # .bindery/run/): stopped, so the supervised ones can take their ports.
    local s f pid
    for s in "${SERVICES[@]}"; do
        f="$RUN/$s.pid"
        [ -f "$f" ] || continue
        pid="$(cat "$f" 2>/dev/null || true)"
        if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-m bindery\.$s"; then
            log "stopping $s (pid $pid), started without the supervisor"
            kill -TERM "$pid" 2>/dev/null || true
            timeout 10 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
}

cmd_up() {
    [ -x "$PYTHON" ] || die "no $PYTHON: run scripts/install.sh (make install)"
    command -v supervisord >/dev/null || die "no supervisord: run scripts/install.sh (make install)"
    mkdir -p "$LOGS" "$SUPERVISOR"
    check_user
    ensure_env
    # Users, permissions and topology; kept passwords, so running services keep working. With
    # the operator's settings: the event log's retention, the broker's address.
    (load_env && "$REPO/scripts/infra.sh" access "$VHOST" "$AMQP_DIR") \
        || die "could not set up the services' broker users (is RabbitMQ up? make infra-up)"
    stop_unsupervised
    write_config
    if supervisor_up; then
        # Running services whose configuration is unchanged keep running; stopped ones start.
        "${CTL[@]}" update >/dev/null
        "${CTL[@]}" start all >/dev/null 2>&1 || true
        log "supervisord already running (pid $("${CTL[@]}" pid))"
    else
        supervisord -c "$SUPERVISOR_CONF"
        log "started supervisord (config $SUPERVISOR_CONF)"
    fi

    local s port deadline=$((SECONDS + WAIT_SECONDS)) pending=("${SERVICES[@]}") still state
    port="$(gateway_port)"
    while [ "${#pending[@]}" -gt 0 ]; do
        still=()
        for s in "${pending[@]}"; do
            if healthy "$s" "$port"; then
                continue
            fi
            state="$(state_of "$s")"
            if [ "$state" = FATAL ]; then
                log "$s keeps exiting; last lines of $LOGS/$s.log:"
                tail -n 40 "$LOGS/$s.log" >&2 || true
                die "$s is not running"
            fi
            still+=("$s")
        done
        pending=("${still[@]+"${still[@]}"}")
        [ "${#pending[@]}" -eq 0 ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for s in "${pending[@]}"; do
                log "$s ($(state_of "$s")) did not answer $(health_url "$s" "$port") within ${WAIT_SECONDS}s; last lines of $LOGS/$s.log:"
                tail -n 40 "$LOGS/$s.log" >&2 || true
            done
            die "unhealthy: ${pending[*]}"
        fi
        sleep 0.5
    done
    log "all services healthy"
}

cmd_down() {
    stop_unsupervised
    if supervisor_up; then
        # Each service gets SIGTERM and 10 s (stopwaitsecs), then supervisord itself exits.
        "${CTL[@]}" stop all >/dev/null || true
        local pid
        pid="$("${CTL[@]}" pid)"
        "${CTL[@]}" shutdown >/dev/null || true
        timeout 20 tail --pid="$pid" -f /dev/null || true
        log "stopped the services and supervisord"
    fi
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
    local s state port rc=0
    if ! supervisor_up; then
        for s in "${SERVICES[@]}"; do printf '%-10s stopped (no supervisord)\n' "$s"; done
        return 1
    fi
    port="$(gateway_port)"
    for s in "${SERVICES[@]}"; do
        state="$(state_of "$s")"
        # STARTING: up for less than startsecs (5 s); it serves all the same.
        if [ "$state" != RUNNING ] && [ "$state" != STARTING ]; then
            printf '%-10s %s\n' "$s" "${state:-unknown}"
            rc=1
        elif healthy "$s" "$port"; then
            printf '%-10s running  pid %s  %s ok\n' "$s" "$(pid_of "$s")" "$(health_url "$s" "$port")"
        else
            printf '%-10s running  pid %s  %s NOT healthy\n' "$s" "$(pid_of "$s")" "$(health_url "$s" "$port")"
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
    run) shift; cmd_run "$@" ;;
    *) echo "usage: $0 up|down|restart|status|run SERVICE" >&2; exit 2 ;;
esac
