"""The gateway's settings (`BINDERY_*` environment variables); each docstring says why."""

from __future__ import annotations

from pydantic import Field, field_validator

from bindery.settings import CommonSettings


class GatewaySettings(CommonSettings):
    host: str = "127.0.0.1"
    """Loopback by default: session containers reach every host address bound to 0.0.0.0, and the
    gateway should be exposed on purpose (a reverse proxy or `BINDERY_HOST`), never by accident."""

    port: int = Field(default=8585, ge=1, le=65535)
    """The port `make up` prints; BinderHub's own default is 8585 too."""

    public_url: str = "http://127.0.0.1:8585"
    """How people reach this gateway: a ready session's `url` is `<public_url>/user/<name>/`."""

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

    progress_max_entries: int = Field(default=20_000, ge=10)
    """Events (mostly build-log lines) kept per launch; the oldest go first beyond that."""

    progress_max_total_entries: int = Field(default=500_000, ge=100)
    """Events kept over all launches (lines of up to a few hundred bytes: ~100 MiB at most);
    whole launches, least recently updated first, go beyond that."""

    progress_terminal_grace: float = Field(default=0.25, ge=0)
    """Build logs travel on their own channel: a build's last lines can arrive just after the
    failure they explain. A build's `failed` (and `ready` while lines still arrive) is held until
    the log has been quiet this long, so those lines come first; a launch without a build (a
    missing ref, a cached image) is never held. A quarter second covers the broker's delivery
    of a backlog that the builder published before its failure."""

    progress_terminal_grace_max: float = Field(default=2.0, ge=0)
    """The longest a terminal event is held while log lines keep coming: the person waiting
    should not wait on a chatty log."""

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

    registry_timeout: float = Field(default=2.0, gt=0)
    """/health answers within a load balancer's check timeout even if the registry hangs."""

    proxy_max_connections: int = Field(default=1000, ge=1)
    """Upstream connections to sessions at once (each open websocket holds one); below the
    process's default soft limit of open files (1024) together with the client side."""

    proxy_connect_timeout: float = Field(default=10.0, gt=0)
    """Sessions are on this machine or its cluster: a connect slower than this is a dead session.
    Reads have no timeout: long polls, event streams and kernel websockets are legitimately idle."""

    routes_retry_interval: float = Field(default=5.0, gt=0)
    """Retry rebuilding routes from the runtime at this pace until one listing succeeds."""

    banned_networks: str = ""
    """Comma-separated CIDRs refused everything but /health and /metrics (abuse seen from them)."""

    trusted_proxies: str = ""
    """Comma-separated CIDRs of reverse proxies in front of the gateway: for requests from them the
    client address comes from X-Forwarded-For. Empty: the socket peer is the client, so a client
    cannot pick its own address by sending the header."""

    launch_rate_per_minute: float = Field(default=10.0, ge=0)
    """New launches per client address per minute once its burst is spent (0: no limit). Resumed
    streams do not count. A launch costs a build or a session, a page view costs nothing."""

    launch_rate_burst: int = Field(default=30, ge=1)
    """Launches one address may start at once: a classroom behind one NAT clicks the same badge
    together (mybinder.org's workshops are tens of people)."""

    client_log_dir: str = ".bindery/client-addresses"
    """Where launch records with client addresses go (one file per UTC day); empty: nowhere."""

    client_log_retention_days: int = Field(default=30, ge=1)
    """mybinder.org keeps IP addresses 30 days, for abuse handling only; older files are deleted."""

    max_sessions: int = Field(default=0, ge=0)
    """Sessions the deployment runs at once, for /health's quota headroom (0: not reported)."""

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")
