#!/usr/bin/env bash
# Network isolation of strangers' code on this machine: sessions and builds (iptables and
# ip6tables, filter table).
#
# Sessions and builds run code from repositories. Both get one network: the public internet on a
# few ports, the configured package mirrors, and DNS; nothing on this host, its LAN or the bus.
#
#   chain (both families)  hooked from                          for
#   BINDERY-SESSIONS-IN    INPUT   -i <session bridges>          sessions -> this host
#   BINDERY-SESSIONS-FWD   FORWARD and NETAVARK_FORWARD          sessions -> anywhere else
#                          -i <session bridges>
#   BINDERY-BUILDS-OUT     OUTPUT  -m owner --uid-owner <build user> and its subordinate uids
#   BINDERY-EGRESS         SESSIONS-FWD and BUILDS-OUT           the policy they share
#   BINDERY-REJECT         every refusal                         how a refusal is said
#
# In every chain a packet of a connection already allowed (ESTABLISHED, RELATED) returns at once;
# what follows is about new connections. Allowed means RETURN (to netavark's NETAVARK_FORWARD,
# which accepts the bridge's subnet, or to OUTPUT's policy), never ACCEPT: these chains only
# take away. Refused means BINDERY-REJECT: a TCP reset, ICMP port unreachable for the rest, so
# the caller gets ECONNREFUSED at once (a reset is not rate-limited as ICMPv6 errors are).
#
#   BINDERY-SESSIONS-IN   IPv6 neighbour discovery (solicitations and adverts, hop limit 255:
#                         without them an IPv6 bridge does not work at all); everything else
#                         REJECT: the broker, the registry, the services and the node sockets
#                         are this host, whichever of its addresses a session aims at.
#   BINDERY-SESSIONS-FWD  -> another session (any session bridge) REJECT, then BINDERY-EGRESS.
#   BINDERY-BUILDS-OUT    -> the builders' package index forwarders (127.0.0.1 tcp 8596-8599),
#                         which serve an index with credentials without them; then
#                         -> the local registry (BINDERY_REGISTRY, tcp) and the registry mirror
#                         (BINDERY_REGISTRY_MIRROR, which may be on this host or its LAN) from
#                         cgroup v2 group bindery-registry only, then BINDERY-EGRESS. Rootless podman's build
#                         steps reach the network through slirp4netns and `ADD <url>` is fetched
#                         by podman itself: both are processes of the build user in this host's
#                         network namespace, so OUTPUT sees them (a `--network host` step runs as
#                         a subordinate uid: matched too). Root's podman builds (before the
#                         sandbox) ran on podman0 and met the session chains instead.
#                         The builder runs `podman push`/`pull` inside the cgroup
#                         (bindery.builder.sandbox.join_registry_cgroup); build steps never run
#                         there, so `ADD http://127.0.0.1:5000/...` stays refused. Only root can
#                         move a process into it (cgroup.procs of the common ancestor is root's).
#   BINDERY-EGRESS        1. DNS, udp and tcp 53, to the nameservers of /etc/resolv.conf only
#                            (here a private address, so before 3)                      RETURN
#                         2. the configured package mirrors (BINDERY_INDEX_URL, _CONDA_CHANNEL_
#                            ALIAS, _CRAN_MIRROR, _NIX_CHANNEL, _NIX_SUBSTITUTERS), their address
#                            and port, even on the LAN                                    RETURN
#                         3. loopback, RFC 1918, CGNAT 100.64/10, link-local 169.254/16 (cloud
#                            metadata), 0/8, IETF 192.0.0/24, 6to4 relay, benchmarking 198.18/15,
#                            multicast, 240/4 and broadcast; ::1, ::, mapped ::ffff:0:0/96,
#                            compatible ::/96, local NAT64 64:ff9b:1::/48, discard 100::/64,
#                            6to4 2002::/16, ULA fc00::/7, link-local fe80::/10, site-local
#                            fec0::/10, multicast ff00::/8                                REJECT
#                         4. any address of this host (addrtype LOCAL)                    REJECT
#                         5. the subnets of this host's own interfaces (its LAN, whatever its
#                            addresses), read at `up`                                     REJECT
#                         6. tcp to BINDERY_EGRESS_PORTS (default 80,443,9418)            RETURN
#                         7. everything else (other ports, udp, icmp)                     REJECT
#                         Documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24,
#                         2001:db8::/32) are never routed on the internet; where a LAN uses one,
#                         as this machine's does, rule 5 covers it. The well-known NAT64 prefix
#                         64:ff9b::/96 stays open: IPv6-only hosts reach the IPv4 internet
#                         through it, and RFC 6052 forbids translating private addresses there.
#
# Bridged traffic between sessions passes iptables because br_netfilter is on
# (bridge-nf-call-iptables and -ip6tables = 1; this script turns them on). The rules are static:
# they cost a launch nothing. Each chain is rewritten in one iptables-restore transaction, so a
# re-run never leaves a moment without rules.
#
# Our jumps go first in INPUT, FORWARD and OUTPUT. netavark's NETAVARK_FORWARD accepts everything
# from a bridge's subnet, and netavark (1.4) inserts its jump to it at the top of FORWARD whenever
# that jump is missing: at the first network of a family after a reboot or a flush, e.g. the
# first IPv6 network, ahead of ours. So our jump also heads NETAVARK_FORWARD itself (made here if
# netavark has not yet), which netavark only appends to and never flushes: sessions meet our rules
# before any ACCEPT of netavark's, whatever the order in FORWARD. `up` is idempotent and re-asserts
# the order.
#
# The registry rule holds the cgroup it found at `up`: a bindery-registry directory removed and
# made again is another cgroup, which the rule no longer matches (pushes are refused, never
# widened); `status` notices and `up` binds the new one. Mirror host names and the LAN's subnets
# are read at `up` too: run it again after they change.
#
# Settings are read the way scripts/services.sh gives them to the services: .bindery/env when it
# sets them, else the environment, else the default.
#   BINDERY_EGRESS_PORTS     tcp ports open to the internet: comma-separated ports or ranges
#                            (a-b), or `none`. Default 80,443,9418: what mybinder.org's network
#                            policy opens (http, https, and git's own protocol for git://
#                            remotes); ssh (22) is not in it, so a session cannot be an ssh
#                            client for its repository's users' other machines.
#   BINDERY_BUILD_USER       the build sandbox user (default bindery-build; scripts/install.sh
#                            creates it). Missing: the build chain is skipped, saying so.
#   BINDERY_SESSION_BRIDGES  iptables interface pattern of session bridges (default podman+)
#   BINDERY_REGISTRY         host:port of the local registry (environment or 127.0.0.1:5000,
#                            as scripts/infra.sh)
#
# usage: scripts/isolation.sh up|down|status
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_FILE="$REPO/.bindery/env"
STATE_DIR=/run/bindery
CGROUP_STAMP="$STATE_DIR/isolation-registry-cgroup"

IN=BINDERY-SESSIONS-IN
FWD=BINDERY-SESSIONS-FWD
OUT=BINDERY-BUILDS-OUT
EGRESS=BINDERY-EGRESS
REJECT=BINDERY-REJECT
NETAVARK=NETAVARK_FORWARD
REGISTRY_CGROUP=bindery-registry
# The builders' package index forwarders (BINDERY_INDEX_FORWARDER_PORT, bindery.builder.
# indexforward): build steps reach them at 10.0.2.2 through slirp4netns, as the build user.
INDEX_FORWARDERS=8596:8599

log() { printf '[isolation] %s\n' "$*"; }
die() { printf '[isolation] ERROR: %s\n' "$*" >&2; exit 1; }

setting() {  # setting NAME DEFAULT: .bindery/env's value, else the environment's, else DEFAULT
    local name="$1" default="$2" value
    value="$(
        set +eu
        if [ -r "$ENV_FILE" ]; then
            set -a
            # shellcheck disable=SC1090
            . "$ENV_FILE" >/dev/null 2>&1
        fi
        printf '%s' "${!name-}"
    )"
    printf '%s' "${value:-$default}"
}

BRIDGES="$(setting BINDERY_SESSION_BRIDGES podman+)"
BUILD_USER="$(setting BINDERY_BUILD_USER bindery-build)"
EGRESS_PORTS="$(setting BINDERY_EGRESS_PORTS 80,443,9418)"
REGISTRY="${BINDERY_REGISTRY:-127.0.0.1:5000}"

ipt() {  # ipt 4|6 ARGS...
    if [ "$1" = 4 ]; then shift; iptables -w "$@"; else shift; ip6tables -w "$@"; fi
}

family_of() { case "$1" in *:*) echo 6 ;; *) echo 4 ;; esac; }

# --- what the rules are made of ---------------------------------------------------------
DENY4=(0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12
       192.0.0.0/24 192.88.99.0/24 192.168.0.0/16 198.18.0.0/15 224.0.0.0/4 240.0.0.0/4)
DENY6=(::/128 ::1/128 ::ffff:0:0/96 ::/96 64:ff9b:1::/48 100::/64 2002::/16 fc00::/7
       fe80::/10 fec0::/10 ff00::/8)

tcp_ports() {  # BINDERY_EGRESS_PORTS as iptables --dport values, one a line
    local entry lo hi
    [ "$EGRESS_PORTS" = none ] && return 0
    IFS=', ' read -r -a entries <<< "$EGRESS_PORTS"
    for entry in "${entries[@]}"; do
        [ -n "$entry" ] || continue
        [[ "$entry" =~ ^([0-9]{1,5})([-:]([0-9]{1,5}))?$ ]] \
            || die "BINDERY_EGRESS_PORTS: '$entry' is not a port or a range a-b"
        lo="${BASH_REMATCH[1]}"; hi="${BASH_REMATCH[3]:-$lo}"
        { [ "$lo" -ge 1 ] && [ "$hi" -le 65535 ] && [ "$lo" -le "$hi" ]; } \
            || die "BINDERY_EGRESS_PORTS: '$entry' is out of 1-65535"
        if [ "$lo" = "$hi" ]; then echo "$lo"; else echo "$lo:$hi"; fi
    done
}

nameservers() {  # nameservers 4|6: of /etc/resolv.conf (and systemd-resolved's upstream list,
                 # which podman hands containers when the host's is a loopback stub)
    local f
    for f in /etc/resolv.conf /run/systemd/resolve/resolv.conf; do
        [ -r "$f" ] && awk '$1 == "nameserver" { sub(/%.*/, "", $2); print $2 }' "$f"
    done | sort -u | while read -r ns; do
        [ "$(family_of "$ns")" = "$1" ] && echo "$ns"
    done
    return 0
}

connected() {  # connected 4|6: subnets of this host's own interfaces but loopback and bridges
    local glob="${BRIDGES%+}*"
    ip -"$1" -o route show table main proto kernel 2>/dev/null | while read -r net kw dev _; do
        [ "$kw" = dev ] || continue
        # shellcheck disable=SC2254
        case "$dev" in lo | $glob) continue ;; esac
        case "$net" in */*) echo "$net" ;; *) [ "$1" = 4 ] && echo "$net/32" || echo "$net/128" ;; esac
    done
    return 0
}

mirrors() {  # "family address port" lines: the package mirrors the builder is configured with
    endpoints BINDERY_INDEX_URL BINDERY_CONDA_CHANNEL_ALIAS BINDERY_CRAN_MIRROR \
        BINDERY_NIX_CHANNEL BINDERY_NIX_SUBSTITUTERS
}

endpoints() {  # endpoints VAR...: "family address port" lines of the http(s) URLs the settings hold
    local v values=()
    for v in "$@"; do values+=("$(setting "$v" "")"); done
    python3 - "${values[@]}" <<'EOF'
import json, socket, sys
from urllib.parse import urlsplit

for value in sys.argv[1:]:
    value = value.strip()
    if not value:
        continue
    try:
        urls = json.loads(value) if value.startswith("[") else [value]
    except ValueError:
        urls = [value]
    for url in (u for item in urls for u in str(item).replace(",", " ").split()):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            continue  # a directory or file:// URL: nothing on the network
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            print(f"[isolation] WARNING: mirror {parts.hostname} does not resolve ({exc}): "
                  "not allowed", file=sys.stderr)
            continue
        for family, *_, sockaddr in infos:
            print(6 if family == socket.AF_INET6 else 4, sockaddr[0].split("%")[0], port)
EOF
}

registry_endpoint() {  # "family address port" of BINDERY_REGISTRY
    local host="${REGISTRY%:*}" port="${REGISTRY##*:}"
    host="${host#[}"; host="${host%]}"
    [ "$host" = localhost ] && host=127.0.0.1
    [[ "$port" =~ ^[0-9]+$ ]] || die "BINDERY_REGISTRY '$REGISTRY' is not host:port"
    if [[ ! "$host" =~ ^[0-9.]+$ && "$host" != *:* ]]; then
        host="$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')"
        [ -n "$host" ] || die "BINDERY_REGISTRY '$REGISTRY' does not resolve"
    fi
    echo "$(family_of "$host") $host $port"
}

cgroup2_root() {  # where cgroup v2 is mounted: /sys/fs/cgroup/unified on hybrid hosts
    local d
    for d in /sys/fs/cgroup/unified /sys/fs/cgroup; do
        [ "$(stat -fc %T "$d" 2>/dev/null)" = cgroup2fs ] && { echo "$d"; return 0; }
    done
    return 1
}

subuid_ranges() {  # the build user's subordinate uids as first-last, one a line
    [ -r /etc/subuid ] || return 0
    awk -F: -v u="$BUILD_USER" -v id="$(id -u "$BUILD_USER")" \
        '($1 == u || $1 == id) && $3 > 0 { print $2 "-" $2 + $3 - 1 }' /etc/subuid
}

build_user_exists() { id "$BUILD_USER" >/dev/null 2>&1; }

# --- rules ------------------------------------------------------------------------------
egress_rules() {  # egress_rules 4|6: BINDERY-EGRESS in iptables-restore form
    local fam="$1" ns net port f a p
    for ns in $(nameservers "$fam"); do
        echo "-A $EGRESS -d $ns -p udp --dport 53 -j RETURN"
        echo "-A $EGRESS -d $ns -p tcp --dport 53 -j RETURN"
    done
    while read -r f a p; do
        [ "$f" = "$fam" ] && echo "-A $EGRESS -d $a -p tcp --dport $p -j RETURN"
    done < <(printf '%s\n' "$MIRRORS")
    if [ "$fam" = 4 ]; then set -- "${DENY4[@]}"; else set -- "${DENY6[@]}"; fi
    for net in "$@"; do echo "-A $EGRESS -d $net -j $REJECT"; done
    echo "-A $EGRESS -m addrtype --dst-type LOCAL -j $REJECT"
    for net in $(connected "$fam"); do echo "-A $EGRESS -d $net -j $REJECT"; done
    for port in $(tcp_ports); do echo "-A $EGRESS -p tcp --dport $port -j RETURN"; done
    echo "-A $EGRESS -j $REJECT"
}

session_rules() {  # session_rules 4|6
    local fam="$1" t
    echo "-A $IN -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
    if [ "$fam" = 6 ]; then
        for t in router-solicitation neighbour-solicitation neighbour-advertisement; do
            echo "-A $IN -p ipv6-icmp --icmpv6-type $t -m hl --hl-eq 255 -j RETURN"
        done
    fi
    echo "-A $IN -j $REJECT"
    echo "-A $FWD -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
    echo "-A $FWD -o $BRIDGES -j $REJECT"
    echo "-A $FWD -j $EGRESS"
}

build_rules() {  # build_rules 4|6
    local fam="$1" f a p
    echo "-A $OUT -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
    read -r f a p <<< "$(registry_endpoint)"
    if [ "$f" = "$fam" ] && [ -n "$CGROUP_ROOT" ]; then
        echo "-A $OUT -d $a -p tcp --dport $p -m cgroup --path $REGISTRY_CGROUP -j RETURN"
    fi
    if [ -n "$CGROUP_ROOT" ]; then
        while read -r f a p; do
            [ "$f" = "$fam" ] \
                && echo "-A $OUT -d $a -p tcp --dport $p -m cgroup --path $REGISTRY_CGROUP -j RETURN"
        done < <(printf '%s\n' "$REGISTRY_MIRRORS")
    fi
    if [ "$fam" = 4 ]; then
        echo "-A $OUT -d 127.0.0.1 -p tcp --dport $INDEX_FORWARDERS -j RETURN"
    fi
    echo "-A $OUT -j $EGRESS"
}

apply() {  # apply 4|6 WITH_BUILDS: every chain of the family, one transaction
    local fam="$1" builds="$2"
    {
        echo "*filter"
        echo ":$REJECT - [0:0]"
        echo ":$EGRESS - [0:0]"
        echo ":$IN - [0:0]"
        echo ":$FWD - [0:0]"
        [ "$builds" = 1 ] && echo ":$OUT - [0:0]"
        echo "-A $REJECT -p tcp -j REJECT --reject-with tcp-reset"
        echo "-A $REJECT -j REJECT"
        egress_rules "$fam"
        session_rules "$fam"
        [ "$builds" = 1 ] && build_rules "$fam"
        echo "COMMIT"
    } > "$RULES"
    if [ "$fam" = 4 ]; then iptables-restore -w --noflush < "$RULES"
    else ip6tables-restore -w --noflush < "$RULES"; fi
}

jumps() {  # jumps 4|6 CHAIN TARGET: rule numbers in CHAIN that jump to TARGET
    ipt "$1" -S "$2" 2>/dev/null | awk -v t="-j $3" 'NR > 1 && index($0 " ", t " ") { print NR - 1 }'
}

hook() {  # hook 4|6 CHAIN TARGET MATCH...: our jumps to TARGET first in CHAIN, each once
    local fam="$1" chain="$2" target="$3" ok=1 i=0 m n
    shift 3
    local -a have
    mapfile -t have < <(jumps "$fam" "$chain" "$target")
    if [ "${#have[@]}" = "$#" ]; then
        for n in "${have[@]}"; do i=$((i + 1)); [ "$n" = "$i" ] || ok=0; done
        # shellcheck disable=SC2086
        for m in "$@"; do ipt "$fam" -C "$chain" $m -j "$target" 2>/dev/null || ok=0; done
    else
        ok=0
    fi
    [ "$ok" = 1 ] && return 0
    i=0
    for m in "$@"; do
        i=$((i + 1))
        # shellcheck disable=SC2086
        ipt "$fam" -I "$chain" "$i" $m -j "$target"
    done
    for n in $(jumps "$fam" "$chain" "$target" | sort -rn); do
        [ "$n" -gt "$#" ] && ipt "$fam" -D "$chain" "$n"
    done
    return 0
}

unhook() {  # unhook 4|6 CHAIN TARGET: every jump from CHAIN to TARGET
    local n
    for n in $(jumps "$1" "$2" "$3" 2>/dev/null | sort -rn); do ipt "$1" -D "$2" "$n"; done
}

drop_chains() {  # drop_chains 4|6 CHAIN...
    local fam="$1" c
    shift
    for c in "$@"; do ipt "$fam" -F "$c" 2>/dev/null || true; done
    for c in "$@"; do ipt "$fam" -X "$c" 2>/dev/null || true; done
}

# --- commands ---------------------------------------------------------------------------
cmd_up() {
    command -v iptables >/dev/null || die "iptables not installed: run scripts/install.sh"
    command -v ip6tables >/dev/null || die "ip6tables not installed: run scripts/install.sh"
    modprobe br_netfilter 2>/dev/null || true
    [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] \
        || die "br_netfilter is not loaded: sessions on one bridge could reach each other"
    echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
    echo 1 > /proc/sys/net/bridge/bridge-nf-call-ip6tables
    tcp_ports >/dev/null  # validates BINDERY_EGRESS_PORTS before anything changes

    MIRRORS="$(mirrors)"
    REGISTRY_MIRRORS="$(endpoints BINDERY_REGISTRY_MIRROR)"
    RULES="$(mktemp)"
    trap 'rm -f "$RULES"' EXIT

    local builds=0 fam m
    CGROUP_ROOT=""
    local -a owners=()
    if build_user_exists; then
        builds=1
        owners=("-m owner --uid-owner $BUILD_USER")
        for m in $(subuid_ranges); do owners+=("-m owner --uid-owner $m"); done
        if CGROUP_ROOT="$(cgroup2_root)"; then
            mkdir -p "$CGROUP_ROOT/$REGISTRY_CGROUP"
            mkdir -p "$STATE_DIR"
            stat -c %i "$CGROUP_ROOT/$REGISTRY_CGROUP" > "$CGROUP_STAMP"
        else
            CGROUP_ROOT=""
            log "no cgroup v2 mounted: builds cannot reach the registry $REGISTRY"
        fi
    fi

    for fam in 4 6; do
        apply "$fam" "$builds"
        hook "$fam" INPUT "$IN" "-i $BRIDGES"
        hook "$fam" FORWARD "$FWD" "-i $BRIDGES"
        ipt "$fam" -N "$NETAVARK" 2>/dev/null || true
        hook "$fam" "$NETAVARK" "$FWD" "-i $BRIDGES"
        if [ "$builds" = 1 ]; then
            hook "$fam" OUTPUT "$OUT" "${owners[@]}"
        else
            unhook "$fam" OUTPUT "$OUT"
            drop_chains "$fam" "$OUT"
        fi
    done

    local ns
    ns="$( { nameservers 4; nameservers 6; } | paste -sd, -)"
    log "sessions on $BRIDGES isolated (IPv4, IPv6): internet tcp $(tcp_ports | paste -sd, -), DNS to ${ns:-none};" \
        "this host, its LAN ($( { connected 4; connected 6; } | paste -sd' ' -)), private and reserved ranges rejected"
    [ -n "$MIRRORS" ] && log "package mirrors allowed: $(printf '%s\n' "$MIRRORS" | awk '{ print $2 ":" $3 }' | paste -sd' ' -)"
    if [ "$builds" = 1 ]; then
        local registry="registry $REGISTRY refused"
        [ -n "$CGROUP_ROOT" ] && registry="registry $REGISTRY from cgroup $CGROUP_ROOT/$REGISTRY_CGROUP only"
        log "builds of $BUILD_USER (uids $(id -u "$BUILD_USER") $(subuid_ranges | paste -sd' ' -)): the same; $registry"
    else
        log "no user $BUILD_USER (scripts/install.sh creates it): build rules skipped"
    fi
}

cmd_down() {
    local fam
    for fam in 4 6; do
        unhook "$fam" INPUT "$IN"
        unhook "$fam" FORWARD "$FWD"
        unhook "$fam" "$NETAVARK" "$FWD"
        unhook "$fam" OUTPUT "$OUT"
        drop_chains "$fam" "$IN" "$FWD" "$OUT" "$EGRESS" "$REJECT"
        ipt "$fam" -X "$NETAVARK" 2>/dev/null || true  # only if up made it and nothing uses it
    done
    local root
    if root="$(cgroup2_root)"; then rmdir "$root/$REGISTRY_CGROUP" 2>/dev/null || true; fi
    rm -f "$CGROUP_STAMP"
    log "session and build isolation removed"
}

first_jump() {  # first_jump 4|6 CHAIN TARGET: the chain's first rule jumps to TARGET
    [ "$(jumps "$1" "$2" "$3" 2>/dev/null | head -n 1)" = 1 ]
}

cmd_status() {
    local rc=0 fam sessions=on builds=on why="" root=""
    for fam in 4 6; do
        first_jump "$fam" INPUT "$IN" && first_jump "$fam" "$NETAVARK" "$FWD" \
            && [ -n "$(jumps "$fam" FORWARD "$FWD")" ] \
            && ipt "$fam" -S "$EGRESS" >/dev/null 2>&1 || sessions=off
    done
    if [ "$sessions" = on ]; then
        local ports  # as the rules have them, whatever the setting says now
        ports="$(ipt 4 -S "$EGRESS" 2>/dev/null | awk '/-p tcp/ && !/ -d / && /-j RETURN/ {
            for (i = 1; i < NF; i++) if ($i == "--dport") print $(i + 1) }' | paste -sd, -)"
        echo "isolation  on       sessions on $BRIDGES (IPv4, IPv6): internet tcp ${ports:-none} and DNS;" \
             "host, LAN, private and reserved ranges rejected"
    else
        echo "isolation  off      sessions (run scripts/isolation.sh up)"
        rc=1
    fi
    if ! build_user_exists; then
        echo "isolation  skipped  builds: no user $BUILD_USER (scripts/install.sh creates it)"
        return "$rc"
    fi
    for fam in 4 6; do first_jump "$fam" OUTPUT "$OUT" || { builds=off; why=" (run scripts/isolation.sh up)"; }; done
    if [ "$builds" = on ] && root="$(cgroup2_root)" \
        && [ "$(stat -c %i "$root/$REGISTRY_CGROUP" 2>/dev/null)" != "$(cat "$CGROUP_STAMP" 2>/dev/null)" ]; then
        builds=stale
        why=": $root/$REGISTRY_CGROUP is not the cgroup the rules hold (run scripts/isolation.sh up)"
    fi
    if [ "$builds" = on ]; then
        local registry="registry $REGISTRY refused"
        ipt 4 -S "$OUT" 2>/dev/null | grep -q -- "-m cgroup" \
            || ipt 6 -S "$OUT" 2>/dev/null | grep -q -- "-m cgroup" \
            && registry="registry $REGISTRY from cgroup $REGISTRY_CGROUP only"
        echo "isolation  on       builds of $BUILD_USER (IPv4, IPv6): the same; $registry"
    else
        echo "isolation  $builds      builds of $BUILD_USER$why"
        rc=1
    fi
    return "$rc"
}

[ "$(id -u)" = 0 ] || die "run as root"
case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
