#!/usr/bin/env bash
# Session network isolation on this machine's podman bridges (iptables, IPv4).
#
# Sessions share a bridge (podman0, 10.88.0.0/16) and this kernel. These rules make a session able
# to answer the connections the gateway and the scheduler open to it, and to reach the internet
# (package indexes), and nothing else:
#   session -> this host (any address: the broker, the registry, the services, node sockets) REJECT
#   session -> another session (same bridge or another podman bridge)                      REJECT
#   session -> 169.254.0.0/16 (cloud metadata, link-local)                                 REJECT
# Rejected connections fail at once (ICMP port unreachable -> ECONNREFUSED). Bridged traffic
# between sessions passes iptables because br_netfilter is on (bridge-nf-call-iptables=1; this
# script turns it on). The rules are static: they cost a launch nothing.
#
# Our jumps go first in INPUT and FORWARD, ahead of netavark's NETAVARK_FORWARD, which accepts
# everything from the bridge's subnet. netavark only appends its jump when missing, so ours stay
# first; `up` is idempotent and re-asserts the order.
#
# usage: scripts/isolation.sh up|down|status
# env:   BINDERY_SESSION_BRIDGES  iptables interface pattern of session bridges (default podman+)
set -euo pipefail

BRIDGES="${BINDERY_SESSION_BRIDGES:-podman+}"
IN=BINDERY-SESSIONS-IN
FWD=BINDERY-SESSIONS-FWD

log() { printf '[isolation] %s\n' "$*"; }
die() { printf '[isolation] ERROR: %s\n' "$*" >&2; exit 1; }

unhook() {  # remove every jump from $1 to $2
    while iptables -D "$1" -i "$BRIDGES" -j "$2" 2>/dev/null; do :; done
}

cmd_up() {
    command -v iptables >/dev/null || die "iptables not installed: run scripts/install.sh"
    modprobe br_netfilter 2>/dev/null || true
    [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] \
        || die "br_netfilter is not loaded: sessions on one bridge could reach each other"
    echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables

    iptables -N "$IN" 2>/dev/null || iptables -F "$IN"
    iptables -A "$IN" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    iptables -A "$IN" -j REJECT

    iptables -N "$FWD" 2>/dev/null || iptables -F "$FWD"
    iptables -A "$FWD" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    iptables -A "$FWD" -d 169.254.0.0/16 -j REJECT
    iptables -A "$FWD" -o "$BRIDGES" -j REJECT
    iptables -A "$FWD" -m addrtype --dst-type LOCAL -j REJECT

    unhook INPUT "$IN"; iptables -I INPUT 1 -i "$BRIDGES" -j "$IN"
    unhook FORWARD "$FWD"; iptables -I FORWARD 1 -i "$BRIDGES" -j "$FWD"
    log "sessions on $BRIDGES isolated (host, other sessions, 169.254.0.0/16 rejected)"
}

cmd_down() {
    unhook INPUT "$IN"; unhook FORWARD "$FWD"
    iptables -F "$IN" 2>/dev/null && iptables -X "$IN" || true
    iptables -F "$FWD" 2>/dev/null && iptables -X "$FWD" || true
    log "session isolation removed"
}

cmd_status() {
    if iptables -S INPUT 2>/dev/null | sed -n 2p | grep -q -- "-j $IN" \
        && iptables -S FORWARD 2>/dev/null | sed -n 2p | grep -q -- "-j $FWD"; then
        echo "isolation  on       sessions on $BRIDGES: host, other sessions, metadata rejected"
    else
        echo "isolation  off"
        return 1
    fi
}

[ "$(id -u)" = 0 ] || die "run as root"
case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
