"""Culler settings (`BINDERY_*` environment variables)."""

from __future__ import annotations

from pydantic import Field

from bindery.settings import CommonSettings


class CullerSettings(CommonSettings):
    health_port: int = 8594
    """Where this service's /health and /metrics listen (on `health_host`): each service has a
    port of its own, so all of them run side by side on one machine."""

    idle_timeout: float = Field(default=600.0, gt=0)
    """mybinder.org culls sessions after 10 minutes without activity."""

    max_age: float = Field(default=12 * 3600.0, gt=0)
    """mybinder.org keeps an active session at least 12 hours, and no longer."""

    check_interval: float = Field(default=30.0, gt=0)
    """How often idle sessions are looked for; a session lives at most this long past its limit
    (plus the time its Jupyter takes to answer)."""

    activity_query_concurrency: int = Field(default=50, gt=0)
    """Sessions asked about their kernels and terminals at the same time. Only sessions the
    culler saw no one use for a whole idle period are asked, so a check rarely asks many; the
    bound keeps a burst (the first check after a restart asks every session without recent
    activity in the event log) from opening thousands of connections at once."""

    activity_query_timeout: float = Field(default=5.0, gt=0)
    """Per request to a session's Jupyter, which answers its REST API in milliseconds even
    while kernels run (they are processes of their own). A session that does not answer in
    time keeps its last known activity and is asked again at the next check."""
