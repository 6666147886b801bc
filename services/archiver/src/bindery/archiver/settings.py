"""Archiver settings (`BINDERY_*` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from bindery.settings import CommonSettings


class ArchiverSettings(CommonSettings):
    health_port: int = 8595
    """Where this service's /health and /metrics listen (on `health_host`): each service has a
    port of its own, so all of them run side by side on one machine."""

    archive_dir: Path = Path(".bindery/archive")
    """Daily files `events-YYYY-MM-DD.jsonl`, as mybinder.org publishes its launch archive;
    relative to the working directory, which `make up` sets to the checkout (beside the logs)."""

    public_url: str = "http://127.0.0.1:8585"
    """The gateway's public URL (same variable as the gateway's): its host is each record's
    `origin`, as BinderHub writes its own host there."""

    max_open_launches: int = 10_000
    """Launches followed until they end; past this the oldest is dropped (a launch whose end
    was lost must not grow memory for ever)."""

    max_launch_duration: float = Field(default=7200.0, gt=0)
    """Seconds of the event log replayed at start, to rebuild the launches in flight when the
    archiver stopped. The longest a launch can last: the scheduler's queue timeout (600 s),
    resolve timeout (45 s), build timeout (3600 s) and startup timeout (120 s) make about 73
    minutes; two hours leaves room for delays between them. Keep it under the event log's
    `event_log_max_age`, or the log no longer holds the oldest of them."""
