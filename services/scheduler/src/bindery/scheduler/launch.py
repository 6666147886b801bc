"""The scheduler's domain: an image to run becomes a ready session, an idle one is stopped.

In: ref-resolved (image present), image-built (each with the repository's own quota),
idle-detected, launch-abandoned; the runtime's survey (the sessions of the nodes that answer,
and which nodes did not) at start and now and then, its exits as they happen; the disk each
session wrote. Out: launch-queued, image-pulling, pod-scheduled, pod-ready, launch-failed,
pod-stopped.

A launch takes a seat (admission: quotas, capacity, the waiting queue), then either claims a warm
session of its image or starts one on the chosen node, pulling the image first when that node
lacks it, and waits until Jupyter answers. Starts take turns in their node's start line
(`starts.py`: a few at once, launches in request order, told their place, before warm ones).
Handlers are idempotent: a launch's key (its session name) comes from its launch id, and the
runtime finds a session by that key on any node, so a redelivered launch resumes its session
instead of starting a twin.

A launch abandoned before it is ready (every client left) leaves the queue, or has the session
it started stopped (pod-stopped `abandoned`); one that arrives after its abandonment starts
nothing. A session whose server exits by itself (shut down, crashed, killed) gives its seat back
at once and is removed, with a pod-stopped saying why (`exits.py`); a launch still starting
fails instead. Bindery's own stops say why once.

In the background the scheduler pulls images ahead of their launches (`prepulls.py` decides:
popular images keep free seats on their holders, recently launched ones keep a holder through
node churn; one pull a node, never where a launch pulls or starts, and a launch that must pull
on a node cancels the pre-pull there), keeps the warm pool filled, stops sessions that wrote
more than the disk limit (`disk.py`; reason `disk`), follows the runtime's exits, and every
`BINDERY_RECONCILE_INTERVAL` ends the seats whose session is gone without the runtime having
said so.
One scheduler process owns the quotas: run a single replica (a restart hands over cleanly).

A node that cannot be reached, or does not answer its ping (`watch_nodes`, every second), is
down: nothing new is placed on it (no launch, warm session or pre-pull), nothing is asked of it,
its seats are kept, and once it has been down longer than `BINDERY_NODE_LOST_SECONDS` its
sessions are ended as lost (pod-stopped `node_lost`). A node that answers late but answers its
ping is busy, not down: what it did not say is unknown (not a holder of the image, its sessions
not gone). A node that comes back is used again at once: what it still runs that was ended
meanwhile (or said stopped before this scheduler started) is stopped quietly, and sessions the
scheduler never knew (it started while the node was down) are adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import structlog

from bindery import telemetry
from bindery.events import (
    Event,
    FailureReason,
    IdleDetected,
    ImagePulling,
    LaunchAbandoned,
    LaunchContext,
    LaunchFailed,
    LaunchQueued,
    PodReady,
    PodScheduled,
    PodStopped,
    QueueLimit,
    StopReason,
)
from bindery.naming import repo_key, session_name
from bindery.runtimes import (
    Limits,
    NodeTimedOut,
    NodeUnreachable,
    Runtime,
    RuntimeError_,
    Session,
    SessionSpec,
    Survey,
)
from bindery.runtimes.base import DiskUsage, Exit
from bindery.runtimes.capacity import node_memories
from bindery.scheduler import metrics
from bindery.scheduler.admission import Admission, QueueTimeout, Withdrawn
from bindery.scheduler.cluster import Cluster, Seat
from bindery.scheduler.disk import over_limit
from bindery.scheduler.exits import ended_sessions, stop_reason
from bindery.scheduler.popularity import Popularity, warm_pool_sessions, warm_targets
from bindery.scheduler.prepulls import Pull, headroom, plan
from bindery.scheduler.settings import SchedulerSettings
from bindery.scheduler.starts import Priority, StartLine
from bindery.sessionnetwork import SessionNetwork
from bindery.tokens import session_token

log = structlog.get_logger("bindery.scheduler")

Publish = Callable[[Event], Awaitable[None]]
T = TypeVar("T")

ABANDONED_REMEMBERED = 10_000
"""Abandoned launches remembered so their image-built, which may come up to a build's time
limit later, starts nothing. Ids are 32 characters: well under a megabyte."""

EXITS_RETRY_PAUSE = 1.0
"""Before following the runtime's exits again after the stream itself failed, so a stream that
fails at once does not spin (the loop's next step comes without a pause: exits come in bursts)."""

NODE_PROBE_INTERVAL = 1.0
"""How often every node is pinged (`watch_nodes`): a hung node is down within this and the
runtime's ping bound, before a launch's lookup on it gives up (podman: 1 + 5 s against 10 s),
and a node back is used within a second. A ping costs podman about a millisecond."""


async def _when_due(soon: asyncio.Event, interval: float) -> None:
    """Until `soon` is set or `interval` seconds passed; `soon` is cleared for the next time."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(soon.wait(), interval)
    soon.clear()


@dataclass(frozen=True)
class LaunchOrder:
    """A launch whose image exists, with the context of the event that asked for it (its
    pod-ready carries it on)."""

    launch_id: str
    image: str
    context: LaunchContext

    @property
    def repo_url(self) -> str:
        return self.context.repo_url

    @property
    def repo_key(self) -> str:
        return self.context.repo_key

    @property
    def repo_quota(self) -> int | None:
        """The repository's own quota (`RepoConfig.quota`); None: `BINDERY_REPO_QUOTA`."""
        return self.context.repo_config.quota

    @property
    def session_env(self) -> Mapping[str, str]:
        """BinderHub's variables for its session."""
        return self.context.session_env

    @property
    def requested_at(self) -> datetime:
        """When the launch was requested: its place in its node's start line."""
        return self.context.requested_at


class NotReady(Exception):
    pass


class Abandoned(Exception):
    """Every client left the launch before it was ready (launch-abandoned)."""


@dataclass
class Progress:
    """A launch between its order and its end, as the events about it find it."""

    name: str
    """Its session's name: the launch's key, or the warm session it was given."""
    started: bool = False
    """A session was started or claimed for it (or a redelivery found one): stop it if it ends
    without being ready."""
    ready: bool = False
    abandoned: bool = False
    exit: Exit | None = None
    """Its server ended before the launch did."""
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    """Abandoned, or its server ended: the launch's waits end at once."""

    def check(self) -> None:
        """Raise what ended the launch early, if anything did."""
        if self.abandoned:
            raise Abandoned
        if self.exit is not None:
            raise NotReady(f"its Jupyter server exited (status {self.exit.code})")


@dataclass
class Scheduler:
    settings: SchedulerSettings
    runtime: Runtime
    publish: Publish
    http: aiohttp.ClientSession
    cluster: Cluster
    popularity: Popularity = field(init=False)
    admission: Admission = field(init=False)
    starts: StartLine = field(init=False)
    network: SessionNetwork = field(init=False)
    """The CA bundle and package index every session gets (read once: its log line too)."""
    resumed: set[str] = field(default_factory=set)
    """Sessions found by a redelivered launch since start: not orphans."""
    _launches: dict[str, Progress] = field(default_factory=dict)
    """Launches in progress, by launch id."""
    _abandoned: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Launch ids abandoned before they reached the scheduler or were ready, oldest first."""
    _stopping: set[str] = field(default_factory=set)
    """Sessions Bindery is stopping: their exit is its own doing, and it says why itself."""
    _pulls: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    _prepulling: dict[str, str] = field(default_factory=dict)
    """node -> image of the pre-pull under way there that no launch waits for (a launch that
    must pull another image on that node cancels it)."""
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _maintain_soon: asyncio.Event = field(default_factory=asyncio.Event)
    _prepull_soon: asyncio.Event = field(default_factory=asyncio.Event)
    _exits: AsyncGenerator[Exit, None] | None = None
    """The runtime's exits, followed by `handle_next_exit`."""
    clock: Callable[[], float] = time.monotonic
    """Seconds on a clock that only goes forward: how long nodes have been down, when images
    were launched (a simulation runs the scheduler on its own virtual clock)."""
    _left_on_down_nodes: set[str] = field(default_factory=set)
    """Sessions ended or stopped while their node did not answer: their containers may still be
    there, to stop when it is back."""
    _unlisted: set[str] = field(default_factory=set)
    """Nodes whose listing came too late at start (busy, or hung): their sessions are taken
    over by the first survey that lists them, as a node's that comes back."""
    ended_before: set[str] = field(default_factory=set)
    """Sessions whose pod-stopped the event log held at start (`handlers.replay_recent`): one a
    node still holds (it was down meanwhile) is removed quietly, not said stopped again."""

    def __post_init__(self) -> None:
        self.popularity = Popularity(
            self.settings.popularity_window, self.settings.prepull_keep, lambda: self.clock()
        )
        self.network = self.settings.session_network()
        self.admission = Admission(
            self.cluster,
            self.settings.repo_quota,
            self.settings.total_quota,
            self.settings.memory_reservation,
            evict=self._evict,
        )
        self.starts = StartLine(self.settings.start_concurrency)
        metrics.watch(self.admission)
        self._maintain_soon.set()  # the pool and pre-pulls are brought up to date at start

    def _evict(self, seat: Seat) -> None:
        log.info("pool.evicted", name=seat.name, node=seat.node, image=seat.image)
        self.background(self._stop_quietly(seat.name, "evicted for a launch"))

    @classmethod
    async def create(
        cls,
        settings: SchedulerSettings,
        runtime: Runtime,
        publish: Publish,
        http: aiohttp.ClientSession,
    ) -> Scheduler:
        capacity = await node_memories(runtime, settings.node_memory)
        return cls(settings, runtime, publish, http, Cluster(capacity))

    @property
    def limits(self) -> Limits:
        return Limits(
            memory_limit=self.settings.memory_limit,
            memory_reservation=self.settings.memory_reservation,
            cpus=self.settings.cpu_limit,
            pids=self.settings.pids_limit,
            disk=self.settings.disk_limit,
        )

    def token(self, name: str) -> str:
        return session_token(self.settings.require_secret(), name)

    def background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        # Nobody awaits these tasks: an error they did not expect would otherwise vanish.
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background.failed", error=repr(error), exc_info=error)

    # --- start: rebuild the view from the runtime -----------------------------------------

    async def reconcile(self) -> None:
        """Adopt live sessions and warm ones on the nodes that answer; remove dead containers
        (saying why, for launched ones: the gateway may still route to them) and, after the
        startup timeout, running ones that never answered and that no redelivered launch came
        back for. A node that does not answer is down; its sessions are taken over if it comes
        back (`_node_back`).
        """
        survey = await self._survey()
        self._unlisted = set(survey.unanswered)
        for session in survey.sessions:
            try:
                await self._take_over(session)
            except (RuntimeError_, aiohttp.ClientError) as exc:
                # One session the runtime would not stop must not keep the scheduler from
                # starting (every launch would wait for it): the next pass tries it again.
                log.warning("reconcile.take_over_failed", session=session.name, error=str(exc))
        log.info("reconcile.done", seats=len(self.cluster.seats))

    async def _take_over(self, session: Session) -> None:
        """Give a session found in the runtime its seat, or remove it if it no longer runs or
        was said stopped before this scheduler started."""
        if session.name in self.ended_before:
            self.ended_before.discard(session.name)
            log.info("reconcile.removed", session=session.name, why="said stopped before")
            await self._stop_quietly(session.name, "said stopped before")
            return
        if not session.running:
            log.info("reconcile.removed", session=session.name, why="not running")
            if session.warm:
                await self._stop_session(session.name)
            else:
                ended = session.exit or Exit(session.name, session.node)
                await self._end(session.launch_id, session.name, stop_reason(ended))
            return
        # Not a launch: demand is what was launched within the window (the event log's replay
        # and the launches since), not the sessions that happen to run. Counting these, a
        # restarted scheduler warmed the images of whatever was left running, however long ago
        # it was launched, ahead of the images launched a minute ago.
        self.cluster.learn_image(session.node, session.image)
        seat = Seat(
            session.name,
            session.node,
            session.image,
            session.memory_reservation or self.settings.memory_reservation,
            repo_key="" if session.warm else repo_key(session.repo),
            pool=session.warm,
            launch_id=session.launch_id,
        )
        self.cluster.occupy(seat)
        self.background(self._adopt(session, seat))

    async def _survey(self) -> Survey:
        """Every session on the nodes that answer. Which nodes could not be reached is recorded
        (placement avoids them); a node that is back has its sessions reconciled."""
        began = self.clock()
        survey = await self.runtime.survey()
        down, back = self.cluster.observe(survey.unreachable, began, survey.unanswered)
        for node in self.runtime.node_names():
            metrics.NODE_UP.labels(node).set(0 if node in self.cluster.down_since else 1)
        for node in down:
            log.warning("node.down", node=node, error=survey.unreachable[node])
            self._prepull_soon.set()  # its images may have no other holder
        for node, why in survey.unanswered.items():
            log.warning("node.late", node=node, error=why)
        # A node that did not answer when the scheduler started has no known memory yet.
        unmeasured = [
            node
            for node in self.runtime.node_names()
            if node not in self.cluster.down_since
            and node not in survey.unanswered
            and not self.cluster.capacity.get(node)
        ]
        if unmeasured:
            memories = await node_memories(self.runtime, self.settings.node_memory, unmeasured)
            self.cluster.capacity.update(memories)
        listed = set(self.runtime.node_names()) - set(survey.unreachable) - set(survey.unanswered)
        first_listed = sorted((self._unlisted & listed) - set(back))
        self._unlisted -= listed
        for node in back + first_listed:
            log.info("node.back" if node in back else "node.listed", node=node)
            await self._node_back([s for s in survey.sessions if s.node == node])
        if back or first_listed or unmeasured:
            self.admission.pump()  # room again for launches waiting in the queue
            self._maintain_soon.set()  # and for the warm pool and pre-pulls
        return survey

    async def watch_nodes(self) -> None:
        """Ping every node at once: one that fails, or does not answer within the runtime's
        ping bound, is down from now on (only a ping says so: a lookup late on a busy node does
        not); once one that is down or was never measured answers, a survey takes it back
        (`_survey`: its memory read, its sessions reconciled) and launches use it at once.
        One step of the `nodes` loop."""
        checks = self.runtime.node_checks()
        answers = await asyncio.gather(
            *(check() for check in checks.values()), return_exceptions=True
        )
        answering_again = False
        for node, answer in zip(checks, answers, strict=True):
            if isinstance(answer, Exception):
                self._mark_down(node, answer)
            elif isinstance(answer, BaseException):
                raise answer
            elif node in self.cluster.down_since or not self.cluster.capacity.get(node):
                answering_again = True
        if answering_again:
            await self._survey()

    def _mark_down(self, node: str, error: Exception) -> None:
        if self.cluster.mark_down(node, self.clock()):
            log.warning("node.down", node=node, error=str(error))
            metrics.NODE_UP.labels(node).set(0)
            self._prepull_soon.set()  # its images may have no other holder

    def _down_if_unreachable(self, exc: Exception) -> None:
        """A node that could not be reached by a launch (asked for its images, a pull, a start)
        is down from now on, not from the next survey: launches in between go elsewhere. The
        next survey that it answers brings it back. One that answered late (`NodeTimedOut`) is
        not: only its ping tells hung from busy (`watch_nodes`)."""
        if isinstance(exc, NodeUnreachable):
            self._mark_down(exc.node, exc)

    async def _node_back(self, sessions: list[Session]) -> None:
        """A node answers again: sessions ended while it was down are stopped for good; those
        the scheduler never knew (it started while the node was down) are taken over. Sessions
        still seated were within the grace and simply go on."""
        for session in sessions:
            if session.name in self.cluster.seats:
                continue
            if session.name in self._left_on_down_nodes:
                self._left_on_down_nodes.discard(session.name)
                log.info("node.leftover_stopped", session=session.name, node=session.node)
                await self._stop_quietly(session.name, "ended while its node was down")
            else:
                await self._take_over(session)

    async def _adopt(self, session: Session, seat: Seat) -> None:
        try:
            await self.wait_until_ready(session, self.token(session.name))
        except NotReady:
            if session.name in self.resumed:
                return  # its launch came back and handles the failure itself
            log.warning("reconcile.orphan_removed", session=session.name, node=session.node)
            await self._stop_quietly(session.name, "orphan")
            return
        if seat.pool and self.cluster.seats.get(seat.name) is seat:
            seat.warm = session
            self.admission.pump()

    # --- launches ---------------------------------------------------------------------------

    @metrics.timed_launch
    async def launch(self, order: LaunchOrder) -> None:
        if order.launch_id in self._abandoned:
            log.info("launch.skipped", why="abandoned before the scheduler got it")
            metrics.launch_abandoned()
            return
        key = session_name(order.repo_url, order.launch_id)
        structlog.contextvars.bind_contextvars(session=key)
        self.popularity.record(order.image, order.repo_url, order.session_env)
        progress = self._launches[order.launch_id] = Progress(key)
        try:
            await self._launch(order, progress)
        finally:
            if self._launches.get(order.launch_id) is progress:
                del self._launches[order.launch_id]

    async def _launch(self, order: LaunchOrder, progress: Progress) -> None:
        try:
            # Both ask every node: at once, so a node late to answer delays the launch once.
            session, _ = await asyncio.gather(
                self._resume(order, progress), self.refresh_holders(order.image)
            )
            if session is None:
                session = await self._seat_and_start(order, progress)
            else:
                await self._until_ready(progress, session)
        except (Abandoned, Withdrawn):
            await self._give_up(order, progress)
            return
        except QueueTimeout as exc:
            await self._fail(
                order, progress.name, FailureReason.NO_CAPACITY, self._queue_message(exc)
            )
            return
        except (RuntimeError_, NotReady) as exc:
            log.warning("launch.failed", error=str(exc))
            self._down_if_unreachable(exc)
            await self._fail(
                order,
                progress.name,
                FailureReason.START_FAILED,
                f"The session could not start: {exc}",
            )
            return
        progress.ready = True
        log.info("launch.ready", node=session.node, name=session.name)
        await self.publish(
            PodReady(
                launch_id=order.launch_id,
                session=session.name,
                node=session.node,
                image=order.image,
                target=session.target,
                context=order.context,
            )
        )
        self._maintain_soon.set()
        if progress.exit is not None:  # it ended while pod-ready was on its way: say so after
            await self._ended_by_itself(progress.exit)

    async def _until_ready(self, progress: Progress, session: Session) -> None:
        ready = self.wait_until_ready(session, self.token(session.name))
        await self._unless_interrupted(progress, ready)

    async def _unless_interrupted(self, progress: Progress, work: Coroutine[Any, Any, T]) -> T:
        """`work`'s outcome, unless the launch is abandoned or its server ends first: then
        `work` (a wait, safe to cancel) is cancelled and `Progress.check` says what happened."""
        task = asyncio.ensure_future(work)
        interrupted = asyncio.ensure_future(progress.interrupted.wait())
        try:
            await asyncio.wait((task, interrupted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            interrupted.cancel()
        if not task.done():
            progress.check()
        return task.result()

    async def _give_up(self, order: LaunchOrder, progress: Progress) -> None:
        """An abandoned launch gives back its place in the queue (already done), its seat, and
        the session it started, if any (pod-stopped `abandoned`: pod-scheduled went out)."""
        log.info("launch.abandoned", name=progress.name, started=progress.started)
        metrics.launch_abandoned()
        if progress.started:
            await self._end(order.launch_id, progress.name, StopReason.ABANDONED)
        elif progress.name in self.cluster.seats:
            await self._stop_quietly(progress.name, "abandoned")

    async def _resume(self, order: LaunchOrder, progress: Progress) -> Session | None:
        """The session a previous delivery of this launch started, if it still runs."""
        session = await self._find_session(progress.name)
        if session is None:
            return None
        self.resumed.add(session.name)
        if session.running:
            log.info("launch.resumed", node=session.node, name=session.name)
            progress.name, progress.started = session.name, True
            if session.name not in self.cluster.seats:
                self.cluster.occupy(
                    Seat(
                        session.name,
                        session.node,
                        session.image,
                        self.settings.memory_reservation,
                        order.repo_key,
                        launch_id=order.launch_id,
                    )
                )
            return session
        await self._stop_session(session.name)
        self.admission.release(session.name)
        return None

    async def _find_session(self, key: str) -> Session | None:
        """The session under `key` on the nodes not known down. A node late to answer (busy,
        or hung) is asked once more: a hung one has failed its pings meanwhile and is skipped,
        a busy one mostly answers the second time. Still unknown, the launch goes on: the
        session is there only if an earlier delivery of this launch started it, and making
        the user wait longer for that rare case is worse than the rare twin, which bears the
        same name, so the session's stop removes both."""
        try:
            return await self.runtime.get(key, skip=set(self.cluster.down_since))
        except NodeTimedOut as exc:
            log.warning("node.late", node=exc.node, error=str(exc))
        try:
            return await self.runtime.get(key, skip=set(self.cluster.down_since))
        except NodeTimedOut as exc:
            log.warning("launch.session_unknown", node=exc.node, error=str(exc))
            return None

    @telemetry.traced("placement")
    async def _seat_and_start(self, order: LaunchOrder, progress: Progress) -> Session:
        """Take a seat, then claim a warm session or start one in the node's line; return the
        session once Jupyter answers."""
        key = progress.name
        self.admission.release(key)  # a seat left by an earlier delivery that died early
        progress.check()  # abandoned already: take no place in the queue
        waiter = self.admission.enqueue(
            key,
            order.repo_key,
            order.image,
            launch_id=order.launch_id,
            repo_quota=order.repo_quota,
            env=order.session_env,
        )

        admitted = await self.admission.wait(
            waiter, self.settings.queue_timeout, self._notify_queued(order)
        )
        seat = admitted.seat
        progress.name = seat.name
        if admitted.warm is not None:
            progress.check()  # abandoned while it was told its place: claim nothing
            progress.started = True
            try:
                session = await self.runtime.claim(admitted.warm, key)
            except RuntimeError_ as exc:
                # The warm session vanished (stopped by hand?): start one where it was.
                log.warning("pool.claim_failed", error=str(exc))
                self.cluster.release(seat.name)
                seat = Seat(
                    key,
                    seat.node,
                    order.image,
                    seat.reservation,
                    order.repo_key,
                    launch_id=order.launch_id,
                )
                self.cluster.occupy(seat)
                progress.name, progress.started = key, False
            else:
                log.info("pool.claimed", name=session.name, node=session.node)
                metrics.WARM_POOL_HITS.inc()
                # Its successor starts now, in the background and behind the launches in its
                # node's line, not when the maintain loop next comes round: a pre-pull there
                # may take minutes, and a burst claims the pool's sessions within seconds.
                self.fill_pool()
                await self._scheduled(order, session.name, session.node)
                await self._until_ready(progress, session)
                return session
        if not admitted.holds_image:
            await self.publish(
                ImagePulling(launch_id=order.launch_id, node=seat.node, image=order.image)
            )
            pull = self.pull(seat.node, order.image, launch=True)
            await self._unless_interrupted(progress, pull)
        progress.check()  # abandoned while it waited or pulled: start nothing
        with self.starts.join(seat.node, Priority.LAUNCH, order.requested_at) as turn:
            notify = self._notify_queued(order)
            in_line = turn.wait(lambda position: notify(position, QueueLimit.STARTING))
            with telemetry.span("start.line"):
                await self._unless_interrupted(progress, in_line)
            progress.check()  # abandoned while its turn came: start nothing
            await self._scheduled(order, key, seat.node)
            spec = self._spec(key, order.image, order.repo_url, order.launch_id, order.session_env)
            progress.started = True  # before the start returns: its exit may come first
            with telemetry.span("container.start"):
                session = await self.runtime.start(seat.node, spec)
            self.cluster.learn_image(seat.node, order.image)
            # The turn lasts until Jupyter answers: that, not the container's start, is the
            # CPU-bound part the line spreads out.
            await self._until_ready(progress, session)
        return session

    def _notify_queued(self, order: LaunchOrder) -> Callable[[int, QueueLimit], Awaitable[None]]:
        """Tell the launch's clients its place (launch-queued) in the line `limit` names."""

        async def notify(position: int, limit: QueueLimit) -> None:
            log.info("launch.queued", position=position, limit=limit.value)
            await self.publish(
                LaunchQueued(
                    launch_id=order.launch_id,
                    repo_key=order.repo_key,
                    position=position,
                    limit=limit,
                )
            )

        return notify

    async def _scheduled(self, order: LaunchOrder, name: str, node: str) -> None:
        await self.publish(
            PodScheduled(launch_id=order.launch_id, session=name, node=node, image=order.image)
        )

    def _spec(
        self,
        name: str,
        image: str,
        repo: str,
        launch_id: str,
        env: Mapping[str, str],
        warm: bool = False,
    ) -> SessionSpec:
        return SessionSpec(
            name=name,
            image=image,
            launch_id=launch_id,
            token=self.token(name),
            repo=repo,
            limits=self.limits,
            warm=warm,
            origins=self.settings.origins(),
            env=env,
            network=self.network,
        )

    def _queue_message(self, exc: QueueTimeout) -> str:
        minutes = self.settings.queue_timeout / 60
        if exc.limit == QueueLimit.REPOSITORY:
            what = f"This repository already has {exc.repo_quota} sessions running, its limit"
        else:
            what = "Bindery has no room for another session right now"
        return f"{what}, and none ended within {minutes:.0f} minutes. Please try again later."

    async def _fail(self, order: LaunchOrder, name: str, reason: FailureReason, msg: str) -> None:
        metrics.launch_failed()
        await self._stop_quietly(name, "launch failed")
        await self.publish(
            LaunchFailed(launch_id=order.launch_id, service="scheduler", reason=reason, message=msg)
        )

    @telemetry.traced("readiness")
    async def wait_until_ready(self, session: Session, token: str) -> None:
        url = f"{session.target}/user/{session.name}/api/status"
        headers = {"Authorization": f"token {token}"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.startup_timeout
        while loop.time() < deadline:
            try:
                async with self.http.get(url, headers=headers) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            # Short and fixed: Jupyter needs about a second, and every poll step is launch time.
            await asyncio.sleep(0.05)
        raise NotReady(f"Jupyter did not answer within {self.settings.startup_timeout:.0f} s")

    # --- images -----------------------------------------------------------------------------

    async def refresh_holders(self, image: str) -> None:
        """Ask every node not known down, at once, whether it holds `image`. One that does not
        answer in time (busy, or hung) is no holder for this placement: a launch placed there
        would wait on it."""
        nodes = self._up_nodes()
        answers = await asyncio.gather(
            *(self.runtime.has_image(node, image) for node in nodes), return_exceptions=True
        )
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, bool):
                self.cluster.learn_image(node, image, answer)
            elif isinstance(answer, NodeTimedOut):
                log.warning("node.late", node=node, error=str(answer))
                self.cluster.learn_image(node, image, present=False)
            elif isinstance(answer, RuntimeError_ | aiohttp.ClientError):
                log.warning("node.unreachable", node=node, error=str(answer))
                self._down_if_unreachable(answer)
            else:
                raise answer

    @telemetry.traced("image.pull")
    async def pull(self, node: str, image: str, *, launch: bool = False) -> None:
        """Pull once per node and image, however many wait for it. A pre-pull of the image
        under way on the node becomes theirs (nothing cancels it any more). A launch's pull
        goes ahead of a pre-pull of another image there: that one is cancelled (and decided
        again at a later round), so the launch's bytes do not wait behind bytes nobody waits
        for."""
        prepulling = self._prepulling.pop(node, None)
        if prepulling is not None and prepulling != image:
            if launch and (yielding := self._pulls.get((node, prepulling))) is not None:
                log.info("image.prepull_cancelled", node=node, image=prepulling, launch=image)
                yielding.cancel()
            else:
                self._prepulling[node] = prepulling
        await asyncio.shield(self._pull_task(node, image))
        self.cluster.learn_image(node, image)

    def _pull_task(self, node: str, image: str) -> asyncio.Task[None]:
        task = self._pulls.get((node, image))
        if task is None:
            log.info("image.pulling", node=node, image=image)
            task = asyncio.create_task(self.runtime.pull(node, image))
            self._pulls[(node, image)] = task
            task.add_done_callback(lambda _: self._pulls.pop((node, image), None))
        return task

    # --- stops ------------------------------------------------------------------------------

    async def stop(self, event: IdleDetected) -> None:
        await self._end(event.launch_id, event.session, event.reason, event.idle_seconds)

    async def _end(
        self, launch_id: str, name: str, reason: StopReason, idle_seconds: float | None = None
    ) -> None:
        """Stop a launched session and say why (pod-stopped): routes, culler, the user. Once:
        a session already being stopped, or already gone with its seat, has been (or will be)
        explained by whoever stopped it."""
        if name in self._stopping:
            return
        self._stopping.add(name)
        self._remember_if_unreachable(name)
        try:
            stopped = await self._stop_session(name)
            seat = self.admission.release(name)
        finally:
            self._stopping.discard(name)
        if not (stopped or seat):
            return
        log.info("session.stopped", session=name, reason=reason.value)
        await self.publish(
            PodStopped(launch_id=launch_id, session=name, reason=reason, idle_seconds=idle_seconds)
        )
        self._maintain_soon.set()

    async def _stop_quietly(self, name: str, why: str) -> None:
        self._stopping.add(name)
        self._remember_if_unreachable(name)
        try:
            await self._stop_session(name)
        except (RuntimeError_, aiohttp.ClientError) as exc:
            log.warning("session.stop_failed", session=name, why=why, error=str(exc))
        finally:
            self._stopping.discard(name)
        self.admission.release(name)

    async def _stop_session(self, name: str) -> bool:
        """Stop `name` on every node but those known down (`_remember_if_unreachable` keeps
        those for when they are back), so a hung one holds no stop up."""
        return await self.runtime.stop(name, skip=set(self.cluster.down_since))

    def _remember_if_unreachable(self, name: str) -> None:
        """The runtime cannot stop a session on a node that does not answer: stop it there when
        the node is back (`_node_back`)."""
        seat = self.cluster.seats.get(name)
        if seat is not None and seat.node in self.cluster.down_since:
            self._left_on_down_nodes.add(name)

    async def abandon(self, event: LaunchAbandoned) -> None:
        """Every client left the launch before it was ready. Waiting, it leaves the queue;
        starting, its session is stopped as soon as it can be; not here yet, it will start
        nothing. Once ready, it is a session like any other and the event changes nothing."""
        progress = self._launches.get(event.launch_id)
        if progress is not None and progress.ready:
            return
        self._abandoned[event.launch_id] = None
        while len(self._abandoned) > ABANDONED_REMEMBERED:
            self._abandoned.popitem(last=False)
        if progress is not None and not progress.abandoned:
            log.info("launch.abandoning", name=progress.name, started=progress.started)
            progress.abandoned = True
            progress.interrupted.set()
            self.admission.cancel(progress.name)

    # --- sessions that end by themselves ------------------------------------------------------

    async def handle_next_exit(self) -> None:
        """Wait for the runtime's next exit and act on it: one step of the loop that ends each
        session as soon as its server exits. The runtime's stream is kept from step to step."""
        if self._exits is None:
            self._exits = self.runtime.exits()
        try:
            ended = await anext(self._exits)
        except Exception:
            self._exits = None  # a stream that raised is over: the next step follows anew
            await asyncio.sleep(EXITS_RETRY_PAUSE)
            raise
        await self.session_exited(ended)

    async def stop_following_exits(self) -> None:
        if self._exits is not None:
            await self._exits.aclose()

    async def session_exited(self, ended: Exit) -> None:
        """A session's server exited. A launch still in progress owns its session's fate: it
        fails (or, ready already, ends the session after its pod-ready). Any other seat is ended
        now, unless Bindery is stopping it itself."""
        progress = next((p for p in self._launches.values() if p.name == ended.name), None)
        if progress is None:
            await self._ended_by_itself(ended)
        elif progress.started and progress.exit is None:
            progress.exit = ended
            progress.interrupted.set()

    async def _ended_by_itself(self, ended: Exit) -> None:
        """Give the seat of a session that ended by itself back and remove what is left of it,
        saying why (pod-stopped) unless it was a warm session nobody had claimed."""
        seat = self.cluster.seats.get(ended.name)
        if seat is None or ended.name in self._stopping:
            return  # Bindery stopped it, or it was never this scheduler's
        reason = stop_reason(ended)
        log.info(
            "session.ended_by_itself",
            session=ended.name,
            node=ended.node,
            status=ended.code,
            reason=reason.value,
            warm=seat.pool,
        )
        metrics.SESSIONS_ENDED.labels(reason.value).inc()
        if seat.pool:  # nobody's session yet: nobody to tell
            await self._stop_quietly(ended.name, "warm session ended")
        else:
            await self._end(seat.launch_id, ended.name, reason)

    async def end_vanished(self) -> list[Exit]:
        """End every settled seat whose session the runtime lists as stopped or not at all;
        return how those ended. Launches and warm sessions still starting find out themselves.
        The safety net under the exits the runtime reports: it misses those of a node whose
        event stream was unreachable a while, or whose handling failed."""
        survey = await self._survey()
        # A node that did not answer (down, or late) listed nothing: its sessions are unknown,
        # not gone.
        unknown = set(self.cluster.down_since) | set(survey.unanswered)
        listed = [seat for seat in self._settled() if seat.node not in unknown]
        vanished = ended_sessions(listed, survey.sessions)
        for ended in vanished:
            log.warning("session.exit_missed", session=ended.name, node=ended.node)
            await self.session_exited(ended)
        await self._end_lost()
        return vanished

    def _settled(self) -> list[Seat]:
        """Seats of sessions that run: not launches or warm sessions still starting (they find
        out themselves that their session is gone)."""
        starting = {progress.name for progress in self._launches.values()}
        return [
            seat
            for seat in self.cluster.seats.values()
            if seat.name not in starting and not (seat.pool and seat.warm is None)
        ]

    async def _end_lost(self) -> None:
        """End the sessions of every node down for longer than `node_lost_seconds`, as lost."""
        lost = self.cluster.lost(self.clock(), self.settings.node_lost_seconds)
        for seat in [seat for seat in self._settled() if seat.node in lost]:
            log.warning("session.node_lost", session=seat.name, node=seat.node, warm=seat.pool)
            metrics.SESSIONS_ENDED.labels(StopReason.NODE_LOST.value).inc()
            if seat.pool:  # nobody's session yet: nobody to tell
                await self._stop_quietly(seat.name, "node lost")
            else:
                await self._end(seat.launch_id, seat.name, StopReason.NODE_LOST)

    # --- background: disk limits -------------------------------------------------------------

    async def check_disk(self) -> list[DiskUsage]:
        """Measure every node at once; stop the sessions over the disk limit (returned). A loop
        of its own, not part of `maintain`: that runs after every launch, and a measure costs
        the nodes a walk of every session's files."""
        with metrics.DISK_CHECK_SECONDS.time():
            measured = await asyncio.gather(*(self._disk_usage(node) for node in self._up_nodes()))
        usages = [usage for node in measured for usage in node]
        for usage in usages:
            if usage.written is None:
                log.warning("disk.unmeasured", session=usage.name, why="files vanished mid-walk")
        over = over_limit(usages, self.settings.disk_limit)
        for usage in over:
            log.warning(
                "session.disk_exceeded",
                session=usage.name,
                launch_id=usage.launch_id,
                written=usage.written,
                limit=self.settings.disk_limit,
                evicted=usage.evicted,
            )
            metrics.DISK_STOPS.inc()
            seat = self.cluster.seats.get(usage.name)
            if seat is not None and seat.pool:  # nobody's session yet: nobody to tell
                await self._stop_quietly(usage.name, "disk limit")
                continue
            try:
                await self._end(usage.launch_id, usage.name, StopReason.DISK)
            except (RuntimeError_, aiohttp.ClientError) as exc:
                log.warning("session.stop_failed", session=usage.name, error=str(exc))
        return over

    def _up_nodes(self) -> list[str]:
        return [n for n in self.runtime.node_names() if n not in self.cluster.down_since]

    async def _disk_usage(self, node: str) -> list[DiskUsage]:
        try:
            return await self.runtime.disk_usage(node)
        except (RuntimeError_, aiohttp.ClientError, OSError) as exc:
            log.warning("disk.unmeasured", node=node, error=str(exc))
            return []

    # --- background: the warm pool ----------------------------------------------------------

    async def maintain_when_due(self) -> None:
        """`fill_pool` every `maintain_interval`, or as soon as a launch or a stop asks for it
        (the first pass at once): one step of the `maintain` loop."""
        await _when_due(self._maintain_soon, self.settings.maintain_interval)
        self.fill_pool()

    # --- background: pre-pulls --------------------------------------------------------------

    async def prepull_when_due(self) -> None:
        """`prepull` every `prepull_interval`, or as soon as a node is found down (its images
        may have no other holder): one step of its loop."""
        await _when_due(self._prepull_soon, self.settings.prepull_interval)
        self.prepull()

    def prepull(self) -> list[Pull]:
        """Start this round's pre-pulls (`prepulls.plan` decides) in the background; return
        them. Nodes busy with a pull (one a node) or a start in their line get none: launches
        there go first. A pull that fails is logged; the next round decides its image again."""
        reservation = self.settings.memory_reservation
        free_seats = {
            node: max(self.cluster.free(node), 0) // reservation
            for node in self._up_nodes()
            if self.cluster.capacity.get(node)
        }
        pulling: dict[str, set[str]] = {}
        for node, image in self._pulls:
            pulling.setdefault(image, set()).add(node)
        busy = {node for node, _ in self._pulls} | set(self.starts.running)
        busy |= set(self.starts.waiting)
        settings = self.settings
        wanted = headroom(
            self.popularity.counts(),
            settings.prepull_launches,
            settings.popularity_window,
            settings.prepull_lead,
        )
        pulls = plan(
            free_seats, busy, self.cluster.holders, pulling, self.popularity.kept(), wanted
        )
        for pull in pulls:
            log.info("image.prepull", node=pull.node, image=pull.image, rule=pull.rule.value)
            self._prepulling[pull.node] = pull.image
            self.background(self._prepull(pull))
        return pulls

    async def _prepull(self, pull: Pull) -> None:
        task = self._pull_task(pull.node, pull.image)
        try:
            await asyncio.shield(task)
        except (RuntimeError_, aiohttp.ClientError) as exc:
            log.warning("image.prepull_failed", node=pull.node, image=pull.image, error=str(exc))
            self._down_if_unreachable(exc)
            return
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # the scheduler stops: not the pull's doing
            return  # a launch went ahead (`pull`)
        finally:
            if self._prepulling.get(pull.node) == pull.image:
                del self._prepulling[pull.node]
        self.cluster.learn_image(pull.node, pull.image)

    def warm_pool_sessions(self) -> int:
        """How many warm sessions the pool's share of the answering nodes' memory holds, each
        counted at what an unclaimed one holds (`warm_session_memory`)."""
        if not self.settings.warm_pool_share:
            return 0  # no pool: spare a sum over every node after every launch and stop
        capacity = sum(self.cluster.capacity.get(node, 0) for node in self._up_nodes())
        return warm_pool_sessions(
            capacity, self.settings.warm_pool_share, self.settings.warm_session_memory
        )

    def fill_pool(self) -> None:
        """Bring the warm pool to its targets (recent demand within its memory budget):
        seats are taken now, their sessions started in the background (each in its node's line,
        behind every launch), so a refill never waits for another. Launches waiting for room
        come first: no seat is taken while one waits."""
        targets = warm_targets(self.popularity.counts(), self.warm_pool_sessions())
        current = self.cluster.pool_by_image()
        for seat in self.cluster.pool_seats():
            if seat.warm is None:
                continue
            # Started for an earlier launch's variables: launches now ask for others.
            stale = seat.warm.env != self.popularity.envs.get(seat.image, {})
            if stale or current[seat.image] > targets[seat.image]:
                current[seat.image] -= 1
                self.admission.release(seat.name)  # unclaimable from now on
                self.background(self._stop_quietly(seat.name, "pool shrinks"))
        for image, wanted in targets.items():
            for _ in range(wanted - current[image]):
                if self.admission.waiters:
                    break
                choice = self.cluster.choose(image, self.settings.memory_reservation)
                if choice is None:
                    break
                repo = self.popularity.repos.get(image, "")
                env = self.popularity.envs.get(image, {})
                pool_id = uuid.uuid4().hex
                seat = Seat(
                    session_name(repo, pool_id),
                    choice.node,
                    image,
                    self.settings.memory_reservation,
                    pool=True,
                )
                self.cluster.occupy(seat)
                spec = self._spec(seat.name, image, repo, pool_id, env, warm=True)
                self.background(self._start_warm(seat, spec))

    async def _start_warm(self, seat: Seat, spec: SessionSpec) -> None:
        try:
            if seat.node not in self.cluster.holding(seat.image):
                await self.pull(seat.node, seat.image)
            with self.starts.join(seat.node, Priority.WARM) as turn:
                await turn.wait()  # behind every launch waiting to start on its node
                session = await self.runtime.start(seat.node, spec)
                await self.wait_until_ready(session, self.token(seat.name))
        except (RuntimeError_, NotReady, aiohttp.ClientError) as exc:
            log.warning("pool.start_failed", name=seat.name, error=str(exc))
            self._down_if_unreachable(exc)
            await self._stop_quietly(seat.name, "warm start failed")
            return
        if self.cluster.seats.get(seat.name) is seat:
            seat.warm = session
            log.info("pool.ready", name=seat.name, node=seat.node, image=seat.image)
            self.admission.pump()
        else:  # evicted while it started
            await self._stop_quietly(seat.name, "evicted while starting")
