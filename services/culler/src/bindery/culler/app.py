"""Wires the culler: its view rebuilt from the runtime, the event log and (at each check) the
sessions themselves; the subscription; the check as a loop supervised by the service runner.

One replica is active at a time (the service runner's `one_active`), the others standing by:
two active cullers would split the activity events between them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import structlog

from bindery import service
from bindery.culler.cull import Culler
from bindery.culler.handlers import replay_recent_activity, subscribe
from bindery.culler.jupyter import JupyterActivity
from bindery.culler.settings import CullerSettings
from bindery.runtimes import make_runtime

log = structlog.get_logger("bindery.culler")


def main() -> None:
    settings = CullerSettings()
    secret = settings.require_secret()

    async def start(starter: service.Starter) -> list[service.Loop]:
        http = await starter.resources.enter_async_context(aiohttp.ClientSession())
        culler = Culler(
            settings.idle_timeout,
            settings.max_age,
            starter.bus.publish,
            JupyterActivity(http, secret, settings.activity_query_timeout),
            ask_concurrency=settings.activity_query_concurrency,
        )
        began = datetime.now(UTC)
        runtime = await make_runtime(settings)
        try:
            culler.adopt(await runtime.list_sessions())
        finally:
            await runtime.close()
        try:
            await replay_recent_activity(
                settings.amqp_url, culler, timedelta(seconds=settings.idle_timeout)
            )
        except Exception as exc:  # no stream, no read permission, broker gone: start anyway
            log.warning("cull.replay_failed", error=str(exc) or type(exc).__name__)
            culler.presume_active(began)
        await subscribe(starter.bus, culler)
        return [service.Loop("check", culler.check, settings.check_interval)]

    service.run("culler", settings, settings.health_port, start, one_active=True)
