"""Wires the archiver: settings, the archive (which remembers what its files already hold), the
launches in flight rebuilt from the event log, then the live subscriptions.

One replica is active at a time (the service runner's `one_active`), the others standing by:
two active archivers would split one launch's events between them.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from bindery import service
from bindery.archiver.archive import Archive
from bindery.archiver.handlers import replay_in_flight, subscribe
from bindery.archiver.settings import ArchiverSettings


def main() -> None:
    settings = ArchiverSettings()

    async def start(starter: service.Starter) -> None:
        archive = Archive(
            settings.archive_dir,
            origin=urlsplit(settings.public_url).netloc,
            max_open=settings.max_open_launches,
        )
        archive.load()
        await replay_in_flight(
            settings.amqp_url, archive, timedelta(seconds=settings.max_launch_duration)
        )
        await subscribe(starter.bus, archive)

    service.run("archiver", settings, settings.health_port, start, one_active=True)
