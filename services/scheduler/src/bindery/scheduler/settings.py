"""Scheduler settings (`BINDERY_*` environment variables)."""

from __future__ import annotations

from bindery.settings import CommonSettings

GiB = 1024**3


class SchedulerSettings(CommonSettings):
    health_port: int = 8593

    memory_limit: int = 2 * GiB
    """mybinder.org's limit: above it the kernel is killed, the Jupyter server lives on."""

    memory_reservation: int = 1 * GiB
    """mybinder.org's guarantee."""

    cpu_limit: float = 1.0
    """One core each, so one busy session cannot starve a 2-core node."""

    pids_limit: int = 512
    """Enough for Jupyter, kernels and a build of a small package; stops fork bombs."""

    startup_timeout: float = 120.0
    """How long Jupyter may take to answer /api/status before the launch fails."""
