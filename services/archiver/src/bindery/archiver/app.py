"""Wires the archiver: settings, the archive (which remembers what its files already hold),
subscriptions.

The archiver is a singleton: replicas would split one launch's events between them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from bindery import service
from bindery.archiver.archive import Archive
from bindery.archiver.handlers import subscribe
from bindery.archiver.settings import ArchiverSettings
from bindery.bus import Bus


def main() -> None:
    settings = ArchiverSettings()

    async def start(bus: Bus) -> None:
        archive = Archive(
            settings.archive_dir,
            origin=urlsplit(settings.public_url).netloc,
            max_open=settings.max_open_launches,
        )
        archive.load()
        await subscribe(bus, archive)

    service.run("archiver", settings, settings.health_port, start)
