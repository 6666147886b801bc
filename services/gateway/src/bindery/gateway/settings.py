"""The gateway's settings (`BINDERY_*` environment variables); each docstring says why."""

from __future__ import annotations

from pydantic import Field, field_validator

from bindery.settings import CapacitySettings


class GatewaySettings(CapacitySettings):
    host: str = "127.0.0.1"
    """Loopback by default: session containers reach every host address bound to 0.0.0.0, and the
    gateway should be exposed on purpose (a reverse proxy or `BINDERY_HOST`), never by accident."""

    port: int = Field(default=8585, ge=1, le=65535)
    """The port `make up` prints; BinderHub's own default is 8585 too."""

    public_url: str = "http://127.0.0.1:8585"
    """How people reach this gateway: a ready session's `url` is `<public_url>/user/<name>/`."""

    sessions_host: str = ""
    """Serve each session on an origin of its own, `<session>.<sessions host>` (a wildcard DNS
    name; `localhost:<port>` locally, which browsers resolve with every subdomain to loopback):
    one session's pages then cannot read or break another's (cookies, service workers,
    storage). Empty: path mode, every session under `<public_url>/user/`, for deployments
    without wildcard DNS (docs/security.md says what one origin cannot defend)."""

    activity_flush_interval: float = Field(default=30.0, gt=0)
    """Activity (what a person does: activity.py) is recorded in memory as it happens and
    published once per interval per active session: no request waits on the broker, and 30 s is
    5% of the culler's 600 s idle timeout."""

    keepalive_interval: float = Field(default=15.0, gt=0)
    """Comment lines on idle event streams: builds can be silent for minutes, and proxies and load
    balancers commonly drop connections idle for 30-60 s."""

    progress_retention: float = Field(default=3600.0, gt=0)
    """How long a finished launch's events (its whole build log) stay replayable in memory."""

    progress_max_launches: int = Field(default=1000, ge=1)
    """Launches buffered at once; the least recently updated ones are dropped first."""

    progress_max_launch_bytes: int = Field(default=16 * 1024**2, ge=64 * 1024)
    """Memory for one launch's events (mostly build-log lines, each up to 8 KiB plus ~300 bytes
    of bookkeeping); the oldest go first beyond that. A builder stops a log at 16 MiB (its
    max_log_bytes): a log of long lines is kept whole, one of many short lines loses its start,
    which `/api/builds/<id>/log` still has."""

    progress_max_total_bytes: int = Field(default=256 * 1024**2, ge=1024**2)
    """Memory for the events of all launches; whole launches, least recently updated first, go
    beyond that. Counted in bytes, not lines: a line can be 8 KiB."""

    progress_final_line_wait: float = Field(default=2.0, ge=0)
    """Build logs travel on their own channel: a build's last lines can arrive just after the
    end (failed, or ready) they explain. A launch's end after a build is held until the
    builder's final log line is in, at most this long (a builder killed mid-build sends none):
    the person waiting should not wait on a lost line. A launch without a build (a missing ref,
    a cached image) is never held."""

    abandon_grace: float = Field(default=30.0, gt=0)
    """When every client watching a launch has left before it is ready and none comes back
    within this long, the launch is abandoned: no session is started for it (BinderHub stops a
    launch whose event stream closed). Long enough for a page reload or a flaky network's
    reconnect; an SSE client's leaving is noticed at the next keepalive, up to
    `keepalive_interval` later."""

    build_log_cache_bytes: int = Field(default=64 * 1024**2, ge=0)
    """Finished build logs kept in memory for `GET /api/builds/<id>/log` (as their JSON answers),
    least recently asked first out: a log someone links to is asked for again and again, and
    each answer from the stream is a read of the broker's disk. A builder stops a log at 16 MiB
    (its max_log_bytes), so the default holds at least a few of the largest."""

    build_log_max_reads: int = Field(default=4, ge=1)
    """Reads of the build-log stream at once (requests for a build being read share its read):
    anyone may ask, and each read makes the broker send a stretch of the stream."""

    build_log_read_wait: float = Field(default=5.0, gt=0)
    """How long a request waits for a read of the build-log stream to be free before it gets
    503: long enough for a few reads of finished logs to end, short enough that a flood of
    requests is turned away instead of piling up."""

    stage_check_interval: float = Field(default=5.0, gt=0)
    """How old the broker's count of each stage's consumers (/health, and the note a new launch
    gets while a stage has none) may be: /health is polled every few seconds by every probe, and
    a supervisor restarts a crashed service within seconds, so 5 s shows an outage while it
    lasts and asks the broker at most once per interval."""

    registry_timeout: float = Field(default=2.0, gt=0)
    """/health answers within a load balancer's check timeout even if the registry hangs."""

    proxy_max_connections: int = Field(default=1000, ge=1)
    """Upstream connections to sessions at once (each open websocket holds one); below the
    process's default soft limit of open files (1024) together with the client side."""

    proxy_connect_timeout: float = Field(default=10.0, gt=0)
    """Sessions are on this machine or its cluster: a connect slower than this is a dead session."""

    proxy_session_requests: int = Field(default=64, ge=1)
    """Proxied HTTP requests one session may have in the gateway at once, served or waiting
    (fairness.py); one more is refused with 503 at once. A browser sends at most 6 at once per
    host over HTTP/1.1 and JupyterLab rarely has a dozen out: 64 leaves room for several tabs
    and an HTTP/2 front proxy, while one session cannot queue without bound."""

    proxy_session_websockets: int = Field(default=64, ge=1)
    """Websockets one session may have open: one per open notebook, console or terminal, plus
    JupyterLab's event stream; 64 is dozens of documents open at once."""

    proxy_session_connections: int = Field(default=96, ge=1)
    """Connections to its Jupyter one session may hold (each served request and each websocket
    holds one); more requests wait up to `proxy_queue_wait` for one, then get 503. Room for a
    full set of requests and websockets of a busy person, and a tenth of
    `proxy_max_connections`, so one session holding all of its own stalls nobody else."""

    proxy_client_requests: int = Field(default=256, ge=1)
    """Proxied HTTP requests one client (abuse.py's `client`: an IPv4 address or an IPv6 /64)
    may have in the gateway at once. Higher than a session's: a classroom behind one NAT is one
    client with tens of people, each sending a few requests at once."""

    proxy_client_websockets: int = Field(default=256, ge=1)
    """Websockets one client may have open: tens of people behind one NAT with a few notebooks
    each; a single person needs a handful (browsers allow about 200 per profile in all)."""

    proxy_client_connections: int = Field(default=384, ge=1)
    """Connections to sessions one client may hold: a NATed classroom's requests and websockets
    together, and well under `proxy_max_connections`, so that one client holding all it may
    leaves most of the gateway to everyone else."""

    proxy_queue_wait: float = Field(default=2.0, ge=0)
    """How long a request waits for a connection of its session, its client or the gateway to
    come free before it gets 503. Jupyter answers most requests in milliseconds: a share still
    full after 2 s is held by long requests, and waiting longer only holds the browser."""

    proxy_idle_timeout: float = Field(default=600.0, gt=0)
    """A proxied request or websocket with no byte moving either way for this long is closed,
    giving its connections back. Legitimately quiet ones send something far more often: Jupyter
    pings its websockets every 30 s, and long polls and event streams answer within a minute,
    since common load balancers cut connections idle for 60 s. 600 s is also the culler's idle
    timeout, so what stays silent longer belongs to a session about to be culled anyway, and
    slow work with no byte in between (a kernel start on a busy node, an export) has room."""

    client_header_timeout: float = Field(default=20.0, gt=0)
    """A client must send a whole request head within this many seconds of its first byte (of
    connecting, for a connection's first request), or its connection is closed (fastlane.py,
    slowclients.py): a browser sends a head in one packet, so even a poor mobile link needs a
    second or two; a slowloris client sending a byte every few seconds is cut here (Apache's
    mod_reqtimeout allows 20 s too)."""

    client_body_timeout: float = Field(default=30.0, gt=0)
    """A request body with no byte arriving for this long is given up (408, connection closed):
    an upload from a live browser never stalls that long between packets (nginx allows 60 s)."""

    client_keepalive_timeout: float = Field(default=75.0, gt=0)
    """An idle kept-alive connection from a client is closed after this long (aiohttp's own
    default is an hour). Longer than the 60 s for which front proxies (nginx, cloud load
    balancers) keep their connections to a backend, so that the gateway never closes one under
    a request they are sending; short enough that idle connections do not pile up."""

    routes_retry_interval: float = Field(default=5.0, gt=0)
    """Retry rebuilding routes from the runtime at this pace until one listing succeeds."""

    banned_networks: str = ""
    """Comma-separated CIDRs refused everything but /health and /metrics (abuse seen from them)."""

    trusted_proxies: str = ""
    """Comma-separated CIDRs of reverse proxies in front of the gateway: for requests from them the
    client address comes from X-Forwarded-For. Empty: the socket peer is the client, so a client
    cannot pick its own address by sending the header."""

    client_ipv6_prefix: int = Field(default=64, ge=16, le=128)
    """The launch limits below count an IPv6 client by this network and an IPv4 client by its
    address. A subscriber gets at least a /64 and may send from any address in it (per
    address, one /64 held 1,000 addresses, each with a burst of its own); IPv4 is scarce and
    NATed, so one address is one home, office or classroom."""

    launch_rate_per_minute: float = Field(default=10.0, ge=0)
    """New launches per client per minute once its burst is spent (0: no limit). Resumed
    streams do not count. A launch costs a build or a session, a page view costs nothing."""

    launch_rate_burst: int = Field(default=0, ge=0)
    """Launches one client may start at once. 0: twice its `max_launches_per_client`, from
    capacity like it: a fixed burst (it was 30) can exceed what the deployment runs at all (24
    sessions on a 24 GiB node), so one client could churn all of it. Set it for a workshop."""

    max_launches_per_client: int = Field(default=0, ge=0)
    """Sessions and launches in progress one client may hold at once; one more fails at once
    (reason `too_many_launches`) saying what it holds. 0: a tenth of `max_sessions`, at least
    3 (abuse.py: `client_cap`), so a full Bindery serves ten clients at least and a big one a
    classroom behind one NAT. Counted by each gateway replica for the launches it started."""

    client_log_dir: str = ".bindery/client-addresses"
    """Where launch records with client addresses go (one file per UTC day); empty: nowhere."""

    client_log_retention_days: int = Field(default=30, ge=1)
    """mybinder.org keeps IP addresses 30 days, for abuse handling only; older files are deleted."""

    max_sessions: int = Field(default=0, ge=0)
    """Sessions the deployment runs at once, for /health's headroom and the per-client limits.
    0: what the scheduler admits, from the same settings, found at start: each node's memory
    (`node_memory`, else what it reports) in whole `memory_reservation`s, at most
    `total_quota`. Set it where the gateway cannot see the nodes."""

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")
