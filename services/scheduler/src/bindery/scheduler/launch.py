"""The scheduler's domain: an image to run becomes a ready session, an idle one is stopped.

In: ref-resolved (image present), image-built, idle-detected. Out: pod-scheduled, pod-ready,
launch-failed, pod-stopped. Placement prefers a node that already holds the image, because
pulling dominates launch time. Handlers are idempotent: the session name comes from the launch
id, so a redelivered launch finds its container instead of starting a twin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog

from bindery.events import (
    Event,
    FailureReason,
    IdleDetected,
    LaunchFailed,
    PodReady,
    PodScheduled,
    PodStopped,
)
from bindery.naming import session_name
from bindery.runtimes import Limits, Runtime, RuntimeError_, Session, SessionSpec
from bindery.scheduler.settings import SchedulerSettings
from bindery.tokens import session_token

log = structlog.get_logger("bindery.scheduler")

Publish = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True)
class LaunchOrder:
    launch_id: str
    image: str
    repo_url: str
    resolved_ref: str


class NotReady(Exception):
    pass


@dataclass
class Scheduler:
    settings: SchedulerSettings
    runtime: Runtime
    node_names: list[str]
    publish: Publish
    http: aiohttp.ClientSession

    @property
    def limits(self) -> Limits:
        return Limits(
            memory_limit=self.settings.memory_limit,
            memory_reservation=self.settings.memory_reservation,
            cpus=self.settings.cpu_limit,
            pids=self.settings.pids_limit,
        )

    async def place(self, image: str) -> str:
        """A node holding the image, else the first node after pulling it there."""
        for node in self.node_names:
            if await self.runtime.has_image(node, image):
                return node
        node = self.node_names[0]
        await self.runtime.pull(node, image)
        return node

    async def launch(self, order: LaunchOrder) -> None:
        name = session_name(order.repo_url, order.launch_id)
        token = session_token(self.settings.require_secret(), name)
        structlog.contextvars.bind_contextvars(session=name)
        try:
            node = await self.place(order.image)
            await self.publish(
                PodScheduled(launch_id=order.launch_id, session=name, node=node, image=order.image)
            )
            spec = SessionSpec(
                name=name,
                image=order.image,
                launch_id=order.launch_id,
                token=token,
                repo=order.repo_url,
                limits=self.limits,
            )
            session = await self.runtime.start(node, spec)
            await self.wait_until_ready(session, token)
        except (RuntimeError_, NotReady) as exc:
            log.warning("launch.failed", error=str(exc))
            await self.runtime.stop(name)
            await self.publish(
                LaunchFailed(
                    launch_id=order.launch_id,
                    service="scheduler",
                    reason=FailureReason.START_FAILED,
                    message=f"The session could not start: {exc}",
                )
            )
            return
        log.info("launch.ready", node=session.node)
        await self.publish(
            PodReady(
                launch_id=order.launch_id,
                session=name,
                node=session.node,
                image=order.image,
                target=session.target,
                repo_url=order.repo_url,
                resolved_ref=order.resolved_ref,
            )
        )

    async def wait_until_ready(self, session: Session, token: str) -> None:
        url = f"{session.target}/user/{session.name}/api/status"
        headers = {"Authorization": f"token {token}"}
        deadline = asyncio.get_running_loop().time() + self.settings.startup_timeout
        delay = 0.05
        while asyncio.get_running_loop().time() < deadline:
            try:
                async with self.http.get(url, headers=headers) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise NotReady(f"Jupyter did not answer within {self.settings.startup_timeout:.0f} s")

    async def stop(self, event: IdleDetected) -> None:
        if await self.runtime.stop(event.session):
            log.info("session.stopped", session=event.session, reason=event.reason.value)
        await self.publish(
            PodStopped(launch_id=event.launch_id, session=event.session, reason=event.reason)
        )
