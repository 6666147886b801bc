"""Culler settings (`BINDERY_*` environment variables)."""

from __future__ import annotations

from bindery.settings import CommonSettings


class CullerSettings(CommonSettings):
    health_port: int = 8594

    idle_timeout: float = 600.0
    """mybinder.org culls sessions after 10 minutes without activity."""

    max_age: float = 12 * 3600.0
    """mybinder.org keeps an active session at least 12 hours, and no longer."""

    check_interval: float = 30.0
    """How often idle sessions are looked for; a session lives at most this long past its limit."""
