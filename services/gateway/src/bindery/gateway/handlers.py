"""Every bus subscription of the gateway, at a glance.

Each replica has its own exclusive queues bound to all domain events and all build logs: it must
see the progress of the launches its browsers wait for, and every route.
"""

from __future__ import annotations

from bindery.bus import Bus, Handlers, topology
from bindery.events import BuildLog, Event, LaunchRequested, PodReady, PodStopped
from bindery.gateway.deps import Gateway
from bindery.gateway.ended import relaunch_link


class EventHandlers:
    def __init__(self, gateway: Gateway) -> None:
        self._progress = gateway.progress
        self._routes = gateway.routes
        self._abuse = gateway.abuse

    async def on_event(self, event: Event) -> None:
        """Domain events: progress for /build streams; routes from pod-ready and pod-stopped;
        what each client holds (abuse.py) from launches' ends and sessions' starts and stops."""
        if self._abuse is not None:
            self._abuse.launches.observe(event)
        if isinstance(event, PodReady):
            # The route first: a client told `ready` goes straight to the session.
            relaunch = relaunch_link(event.context.repo_url, event.context.resolved_ref)
            self._routes.add(event.session, event.target, event.launch_id, relaunch)
        elif isinstance(event, PodStopped):
            self._routes.remove(event.session, event.reason, event.idle_seconds)
        if isinstance(event, LaunchRequested):
            self._progress.requested(event)
        else:
            self._progress.record(event)

    async def on_log(self, event: BuildLog) -> None:
        """Build logs (their own exchange): every line goes into the launch's buffer."""
        self._progress.record(event)


async def subscribe(bus: Bus, gateway: Gateway) -> EventHandlers:
    handlers = EventHandlers(gateway)
    await bus.consume(topology.GATEWAY_EVENTS, Handlers().on(Event, handlers.on_event), prefetch=64)
    await bus.consume(topology.GATEWAY_LOGS, Handlers().on(BuildLog, handlers.on_log), prefetch=256)
    return handlers
