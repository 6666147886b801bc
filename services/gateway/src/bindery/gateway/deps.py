"""What the gateway's handlers depend on, in one object, so tests can hand in fakes (no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from bindery.events import Event, LaunchAbandoned
from bindery.gateway.abuse import (
    AbuseGuard,
    AddressLog,
    RateLimiter,
    client_burst,
    client_cap,
    parse_networks,
)
from bindery.gateway.metrics import LAUNCHES_ABANDONED
from bindery.gateway.progress import ProgressHub
from bindery.gateway.routes import RouteTable, SessionLister
from bindery.gateway.sessionauth import Credentials
from bindery.gateway.sessionurls import SessionUrls
from bindery.gateway.settings import GatewaySettings
from bindery.gateway.stages import StageCheck
from bindery.origins import AllowedOrigins
from bindery.runtimes.base import NodeCheck

if TYPE_CHECKING:  # buildlog's handler reads this Gateway: a runtime import would be a cycle
    from bindery.gateway.buildlog import BuildLogs

log = structlog.get_logger("bindery.gateway")

RegistryCheck = Callable[[], Awaitable[bool]]
FailingLoops = Callable[[], dict[str, str]]


class Publisher(Protocol):
    """The part of `bindery.bus.Bus` the HTTP side uses."""

    @property
    def connected(self) -> bool: ...

    async def publish(self, event: Event, headers: dict[str, str] | None = None) -> None: ...


def abandon_publisher(bus: Publisher) -> Callable[[str], None]:
    """What the progress hub calls (from a timer) when nobody watches a launch any more: publish
    launch-abandoned in the background. If that fails the launch goes on, and its session is
    culled once idle: the slot comes back later, not never."""
    pending: set[asyncio.Task[None]] = set()

    async def publish(launch_id: str) -> None:
        log.info("launch.abandoned", launch_id=launch_id)
        LAUNCHES_ABANDONED.inc()
        try:
            await bus.publish(LaunchAbandoned(launch_id=launch_id))
        except Exception as exc:
            log.error("launch.abandon_publish_failed", launch_id=launch_id, error=str(exc))

    def abandon(launch_id: str) -> None:
        task = asyncio.create_task(publish(launch_id))
        pending.add(task)
        task.add_done_callback(pending.discard)

    return abandon


@dataclass
class Gateway:
    settings: GatewaySettings
    bus: Publisher
    progress: ProgressHub
    routes: RouteTable
    credentials: Credentials
    urls: SessionUrls
    origins: AllowedOrigins
    """Other sites that may start launches and read their progress (settings.allowed_origins)."""
    runtime: SessionLister | None = None
    """Only used at start, to rebuild routes (app.loops); None: there are none to rebuild."""
    registry_check: RegistryCheck | None = None
    """None: ask the registry over HTTP (set at app start with the shared client)."""
    node_checks: dict[str, NodeCheck] = field(default_factory=dict)
    """Runtime node name -> whether it answers, for /health; empty: no nodes reported."""
    abuse: AbuseGuard | None = None
    """Banned networks, per-client launch limits, address log; None: none of them (tests)."""
    build_logs: BuildLogs | None = None
    """None: read the build-log stream of `settings.amqp_url` (set at app start)."""
    capacity: int = 0
    """Sessions the deployment runs at once (`settings.max_sessions`); 0: unknown."""
    stage_check: StageCheck | None = None
    """Which stages of a launch have live consumers, for /health and new launches; None: not
    asked (tests without a broker)."""
    failing_loops: FailingLoops = dict
    """The background loops that fail /health, with why (the service runner's); none in tests
    that run no loops."""

    @classmethod
    def create(
        cls,
        settings: GatewaySettings,
        bus: Publisher,
        runtime: SessionLister | None = None,
        registry_check: RegistryCheck | None = None,
        node_checks: dict[str, NodeCheck] | None = None,
        capacity: int = 0,
        stage_check: StageCheck | None = None,
        failing_loops: FailingLoops = dict,
    ) -> Gateway:
        """`capacity`: sessions the nodes hold, found at start, when `max_sessions` is 0."""
        capacity = settings.max_sessions or capacity
        cap = settings.max_launches_per_client or client_cap(capacity)
        urls = SessionUrls(settings.public_url, settings.sessions_host)
        progress = ProgressHub(
            session_url=urls.url,
            max_launches=settings.progress_max_launches,
            max_launch_bytes=settings.progress_max_launch_bytes,
            max_total_bytes=settings.progress_max_total_bytes,
            retention=settings.progress_retention,
            final_line_wait=settings.progress_final_line_wait,
            abandon_grace=settings.abandon_grace,
            on_abandoned=abandon_publisher(bus),
        )
        abuse = AbuseGuard(
            banned=parse_networks(settings.banned_networks.split(",")),
            trusted_proxies=parse_networks(settings.trusted_proxies.split(",")),
            limiter=RateLimiter(
                settings.launch_rate_per_minute, settings.launch_rate_burst or client_burst(cap)
            ),
            address_log=(
                AddressLog(Path(settings.client_log_dir), settings.client_log_retention_days)
                if settings.client_log_dir
                else None
            ),
            cap=cap,
            ipv6_prefix=settings.client_ipv6_prefix,
        )
        routes = RouteTable()
        if runtime is None:  # no runtime to ask: no session can have outlived a restart
            routes.rebuilt.set()
        return cls(
            settings,
            bus,
            progress,
            routes,
            Credentials(settings.require_secret()),
            urls,
            settings.origins(),
            runtime,
            registry_check,
            node_checks or {},
            abuse,
            capacity=capacity,
            stage_check=stage_check,
            failing_loops=failing_loops,
        )
