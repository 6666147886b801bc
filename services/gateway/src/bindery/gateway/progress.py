"""Launch progress: events -> BinderHub phases, and an in-memory buffer per launch, bounded in
bytes per launch and over all launches (`entry_bytes`: mostly build-log lines, up to 8 KiB each).

In: every launch event this replica sees (its queue is bound to all of them). Out: BinderHub
`/build` payloads, numbered per launch, kept after the launch ends so a client that reconnects
(`Last-Event-ID: <launch id>:<n>`) or asks later gets everything from where it stopped, the whole
build log included. Listeners wait on the buffer itself, so there is no per-client queue to fill.

A build's log lines come once per build, for the launch that started it; each build-started
says which build a launch follows. Every line goes to every launch following its build, and a
launch that joins a build in flight is first given the lines so far (from the buffer of the
first launch following it). Lines are numbered in their build (`BuildLog.seq`): when this
replica did not see a build from its first line (it started mid-build, or its queue was gone
with a lost connection), it reads the earlier ones back from the build-log stream (`read_back`:
the reads `/api/builds/<id>/log` makes) as soon as a line past the gap comes, or a build-started
names a build older than the replica. Lines that come meanwhile wait for them; each line is
shown once, in order.

A launch's end after a build waits for the build's last line (`BuildLog.final`), which travels
on the logs channel and may come just after the end it explains; it ends the wait at once. Only
a line that never comes (a builder killed mid-build, a broker that refused the line) leaves the
end held for at most `final_line_wait`, so the person waiting is not kept waiting for good.

The hub also counts who watches each launch. When every client has left a launch before its end
and none comes back within the abandon grace, the launch is abandoned: its buffer ends with
`failed` (reason `abandoned`, for a client that comes back later) and `on_abandoned` is called
with its id, so the gateway can publish launch-abandoned and the session's slot goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from bindery.events import (
    BuildLog,
    BuildStarted,
    Event,
    ImageBuilt,
    ImagePulling,
    LaunchFailed,
    LaunchQueued,
    LaunchRequested,
    NextStep,
    PodReady,
    PodScheduled,
    QueueLimit,
    RefResolved,
)
from bindery.events.build import build_started_at
from bindery.gateway.stages import waiting_message

log = structlog.get_logger("bindery.gateway.progress")

Payload = dict[str, Any]
ReadBack = Callable[[str], Awaitable[list[BuildLog]]]
"""The lines of a build (by id) the build-log stream holds so far, oldest first."""

TERMINAL_PHASES = frozenset({"ready", "failed"})
WAITING_MESSAGE = "Waiting for a resolver to pick up the launch...\n"
ABANDONED_REASON = "abandoned"


def waiting_payload(launch_id: str) -> Payload:
    return {"phase": "waiting", "message": WAITING_MESSAGE, "launch_id": launch_id}


def to_payload(event: Event, *, session_url: Callable[[str], str]) -> Payload | None:
    """The BinderHub event a client sees for `event`, or None if the event is not shown. A
    ready session's token is not in it: launch.py adds it for the client entitled to it."""
    payload: Payload
    match event:
        case RefResolved(route=NextStep.DONE):
            payload = {
                "phase": "ready",
                "imageName": event.image,
                "message": "Done! Found built image\n",
            }
        case RefResolved(route=NextStep.LAUNCH):
            payload = {
                "phase": "built",
                "imageName": event.image,
                "message": "Found built image, launching...\n",
            }
        case RefResolved():
            payload = {
                "phase": "fetching",
                "message": f"Resolved {event.context.ref} to {event.context.resolved_ref}\n",
            }
        case BuildStarted():
            payload = {"phase": "building", "message": f"Building image {event.image}\n"}
        case BuildLog():
            # BinderHub clients write messages as they come: each must end its own line.
            message = event.message if event.message.endswith("\n") else event.message + "\n"
            if event.phase == "warning":
                # Still a building step to BinderHub clients; Bindery's page also shows it apart.
                payload = {"phase": "building", "message": message, "warning": True}
            else:
                payload = {"phase": event.phase, "message": message}
        case ImageBuilt(route=NextStep.DONE):
            payload = {"phase": "ready", "imageName": event.image, "message": "Done! Image built\n"}
        case ImageBuilt():
            payload = {
                "phase": "built",
                "imageName": event.image,
                "message": "Built image, launching...\n",
            }
        case LaunchQueued(limit=QueueLimit.STARTING):
            payload = {
                "phase": "waiting",
                "message": "Sessions are starting on its machine: position "
                f"{event.position} in line.\n",
                "queue_position": event.position,
                "queue_limit": event.limit.value,
            }
        case LaunchQueued():
            which = "this repository's" if event.limit == QueueLimit.REPOSITORY else "Bindery's"
            payload = {
                "phase": "waiting",
                "message": f"All of {which} sessions are in use: position {event.position} "
                "in the queue, the launch goes on as soon as one ends.\n",
                "queue_position": event.position,
                "queue_limit": event.limit.value,
            }
        case ImagePulling():
            payload = {
                "phase": "pulling",
                "message": f"Pulling image {event.image} onto {event.node}...\n",
            }
        case PodScheduled():
            payload = {"phase": "launching", "message": "Launching server...\n"}
        case PodReady():
            url = session_url(event.session)
            payload = {
                "phase": "ready",
                "message": f"server running at {url}\n",
                "url": url,
                "image": event.image,
                "repo_url": event.context.repo_url,
            }
        case LaunchFailed():
            payload = {"phase": "failed", "message": event.message, "reason": str(event.reason)}
        case _:
            return None
    payload["launch_id"] = event.launch_id
    return payload


def binder_fields(ready: PodReady) -> Payload:
    """The fields BinderHub adds to `ready`, which its clients use for share links: the values
    the session got as environment variables (its launch context's)."""
    env = ready.context.session_env
    return {
        name.lower(): env[name]
        for name in ("BINDER_LAUNCH_HOST", "BINDER_REQUEST", "BINDER_PERSISTENT_REQUEST")
        if name in env
    }


# What an entry holds beyond its strings: the Entry and its payload dict (tracemalloc: ~310
# bytes for a build-log line's).
ENTRY_OVERHEAD = 320


def entry_bytes(payload: Payload) -> int:
    """The memory an entry with `payload` holds, near enough to bound buffers by."""
    return ENTRY_OVERHEAD + sum(
        sys.getsizeof(value) for value in payload.values() if isinstance(value, str)
    )


@dataclass(frozen=True)
class Entry:
    seq: int
    payload: Payload
    size: int
    """`entry_bytes(payload)`, taken when it was buffered."""
    line_id: str = ""
    """A build-log line's event id: a launch joining the build is given it from here, once."""

    @property
    def terminal(self) -> bool:
        return self.payload.get("phase") in TERMINAL_PHASES


@dataclass
class LaunchProgress:
    """Everything shown so far for one launch, and a way to wait for more."""

    launch_id: str
    max_bytes: int
    provider: str = ""
    spec: str = ""
    build_only: bool = False
    """A build-only launch holds no session: leaving it abandons nothing."""
    opened: datetime = field(default_factory=lambda: datetime.now(UTC))
    """When this replica first heard of the launch: its events in the event log come after
    (recovery.py reads them back from there)."""
    watchers: int = 0
    """Clients streaming this launch from this replica right now."""
    session: str = ""
    """The ready session's name, for the credentials only its launcher is given (launch.py)."""
    entries: deque[Entry] = field(default_factory=deque)
    held_bytes: int = 0
    """What `entries` hold (`entry_bytes`)."""
    next_seq: int = 0
    dropped: int = 0
    finished_at: float | None = None
    pending_end: Payload | None = None
    """The launch's end (failed or ready), held until its build's final log line is in."""
    building: bool = False
    """A build started (build-started or a log line seen): its log lines may still be on the way."""
    log_ended: bool = False
    """The build's final log line (BuildLog.final) came: every line of it is in."""
    updated_at: float = field(default_factory=time.monotonic)
    seen_event_ids: set[str] = field(default_factory=set)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def append(self, payload: Payload, line_id: str = "") -> Entry:
        entry = Entry(self.next_seq, payload, entry_bytes(payload), line_id)
        self.next_seq += 1
        self.entries.append(entry)
        self.held_bytes += entry.size
        # The oldest go first; the newest always stays (it may be the launch's end).
        while self.held_bytes > self.max_bytes and len(self.entries) > 1:
            self.held_bytes -= self.entries.popleft().size
            self.dropped += 1
        self.updated_at = time.monotonic()
        if entry.terminal and self.finished_at is None:
            self.finished_at = self.updated_at
        # Wake everyone waiting, then arm a fresh event for the next wait.
        self._changed.set()
        self._changed = asyncio.Event()
        return entry

    def since(self, after: int) -> list[Entry]:
        """Entries with seq > after (all of them for after=-1)."""
        if not self.entries or after >= self.entries[-1].seq:
            return []
        start = max(0, after + 1 - self.entries[0].seq)
        return list(self.entries)[start:]

    async def wait(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until there is an entry after `after`; False on timeout."""
        if self.since(after):
            return True
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


@dataclass
class Following:
    """A build as this replica follows it."""

    launches: list[str]
    """The launches following it, the first seen first."""
    next_seq: int = 0
    """The next line to show: every line before it is shown (or was never kept)."""
    held: list[BuildLog] | None = None
    """Lines that came while its earlier ones are read back, shown after them; None: no read
    under way."""


class ProgressHub:
    """All launches this replica buffers, bounded by count, by bytes and by time after they
    ended."""

    def __init__(
        self,
        *,
        session_url: Callable[[str], str],
        max_launches: int = 1000,
        max_launch_bytes: int = 16 * 1024**2,
        max_total_bytes: int = 256 * 1024**2,
        retention: float = 3600.0,
        final_line_wait: float = 0.0,
        abandon_grace: float = 30.0,
        on_abandoned: Callable[[str], None] = lambda _launch_id: None,
    ) -> None:
        self._session_url = session_url
        self._max_launches = max_launches
        self._max_launch_bytes = max_launch_bytes
        self._max_total_bytes = max_total_bytes
        self._total_bytes = 0
        self._retention = retention
        self._final_line_wait = final_line_wait
        self._abandon_grace = abandon_grace
        self._on_abandoned = on_abandoned
        self._launches: OrderedDict[str, LaunchProgress] = OrderedDict()
        self._builds: OrderedDict[str, Following] = OrderedDict()
        self._began = datetime.now(UTC)
        """Builds started before it were not seen from their first line."""
        self.read_back: ReadBack | None = None
        """Where earlier lines of a build are read back from (set at start); None: nowhere."""
        self._reads: set[asyncio.Task[None]] = set()
        self.closing = False

    def __len__(self) -> int:
        return len(self._launches)

    def get(self, launch_id: str) -> LaunchProgress | None:
        return self._launches.get(launch_id)

    def _launch(self, launch_id: str) -> LaunchProgress:
        launch = self._launches.get(launch_id)
        if launch is None:
            launch = LaunchProgress(launch_id, self._max_launch_bytes)
            self._launches[launch_id] = launch
            self.prune()
        else:
            self._launches.move_to_end(launch_id)
        return launch

    def open(
        self, launch_id: str, provider: str, spec: str, build_only: bool = False
    ) -> LaunchProgress:
        """Register a launch started here, before its request is published, with `waiting`."""
        launch = self._launch(launch_id)
        launch.provider, launch.spec, launch.build_only = provider, spec, build_only
        self._append(launch, waiting_payload(launch_id))
        return launch

    def requested(self, event: LaunchRequested) -> None:
        """A launch-requested seen on the bus (ours echoed back, or another replica's): buffer
        it too, so a client resuming here after its replica died finds it."""
        if event.launch_id in self._launches:
            launch = self._launch(event.launch_id)
            launch.provider = launch.provider or event.provider
            launch.spec = launch.spec or event.spec
        else:
            self.open(event.launch_id, event.provider, event.spec, event.build_only)

    def stalled(self, launch_id: str, stages: list[str]) -> None:
        """Tell whoever waits for the launch that `stages` have no consumer right now: it waits
        in their queue, and goes on when one is back (a status line, not an end)."""
        payload = {
            "phase": "waiting",
            "message": waiting_message(stages),
            "stalled": stages,
            "launch_id": launch_id,
        }
        self._append(self._launch(launch_id), payload)

    def fail(self, launch_id: str, message: str, reason: str = "internal") -> None:
        """A failure the gateway itself saw (e.g. the launch could not be published)."""
        payload = {"phase": "failed", "message": message, "reason": reason, "launch_id": launch_id}
        self._append(self._launch(launch_id), payload)

    def record(self, event: Event) -> Entry | None:
        """Buffer the client-visible form of `event` (a build-log line: for every launch
        following its build); duplicates (redeliveries) are ignored."""
        if isinstance(event, BuildLog) and event.build_id:
            return self._line(event)
        payload = to_payload(event, session_url=self._session_url)
        if payload is None:
            return None
        entry = self._record(event, payload, event.launch_id)
        if isinstance(event, BuildStarted) and event.build_id:
            self._join(event.build_id, event.launch_id)
        return entry

    def _line(self, line: BuildLog) -> Entry | None:
        """A build's line, as it came: shown now, or after the earlier ones this replica
        missed, once they are read back."""
        build = self._following(line.build_id, line.launch_id)
        if build.held is not None:
            build.held.append(line)
            return None
        if line.seq > build.next_seq and self.read_back is not None:
            self._catch_up(line.build_id, build, [line])
            return None
        return self._show(line, build)

    def _show(self, line: BuildLog, build: Following) -> Entry | None:
        """Buffer `line` for every launch following its build, unless it was shown already
        (read back, or redelivered); returns its entry for the launch that started the build."""
        if line.seq < build.next_seq:
            return None
        build.next_seq = line.seq + 1
        payload = to_payload(line, session_url=self._session_url) or {}
        entry = None
        for launch_id in build.launches:
            buffered = self._record(line, {**payload, "launch_id": launch_id}, launch_id)
            entry = buffered if launch_id == line.launch_id else entry
        return entry

    def _catch_up(self, build_id: str, build: Following, held: list[BuildLog]) -> None:
        """Read the build's earlier lines back; `held` and the lines that come meanwhile are
        shown after them."""
        build.held = held
        task = asyncio.get_running_loop().create_task(self._read_back(build_id, build))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read_back(self, build_id: str, build: Following) -> None:
        assert self.read_back is not None
        try:
            earlier = await self.read_back(build_id)
        # Whatever kept the stream from answering (busy, the broker away), the live lines go on.
        except Exception as exc:
            log.warning("progress.read_back_failed", build_id=build_id, error=repr(exc))
            earlier = []
        lines, build.held = [*earlier, *(build.held or [])], None
        for line in sorted(lines, key=lambda line: line.seq):
            self._show(line, build)

    def _following(self, build_id: str, launch_id: str) -> Following:
        """The build as this replica follows it, `launch_id` among its launches."""
        build = self._builds.get(build_id)
        if build is None:
            build = self._builds[build_id] = Following([launch_id])
            # A build has a launch at least: no more builds than launches are worth keeping.
            while len(self._builds) > self._max_launches:
                self._builds.popitem(last=False)
        elif launch_id not in build.launches:
            build.launches.append(launch_id)
        return build

    def _join(self, build_id: str, launch_id: str) -> None:
        """`launch_id` follows the build: give it the lines the first launch following it has
        (each once: the lines after come to both). A build that started before this replica
        has earlier lines to read back."""
        known = self._builds.get(build_id)
        if known is not None and launch_id in known.launches:
            return
        source = self._launches.get(known.launches[0]) if known else None
        build = self._following(build_id, launch_id)
        started = build_started_at(build_id)
        if known is None and started is not None and started < self._began and self.read_back:
            self._catch_up(build_id, build, [])
        if source is None:
            return
        launch = self._launch(launch_id)
        for entry in list(source.entries):
            if entry.line_id and entry.line_id not in launch.seen_event_ids:
                launch.seen_event_ids.add(entry.line_id)
                self._append(launch, {**entry.payload, "launch_id": launch_id}, entry.line_id)
        if source.log_ended:
            launch.log_ended = True
            self._release_end(launch)

    def _record(self, event: Event, payload: Payload, launch_id: str) -> Entry | None:
        launch = self._launch(launch_id)
        if event.event_id in launch.seen_event_ids:
            return None
        launch.seen_event_ids.add(event.event_id)
        if isinstance(event, PodReady):
            launch.session = event.session
            payload.update(binder_fields(event))
        if isinstance(event, BuildLog | BuildStarted):
            launch.building = True
        if payload.get("phase") in TERMINAL_PHASES:
            if launch.finished or launch.pending_end is not None:
                return None  # the first terminal event wins
            # Build logs travel on their own channel, so a build's last lines may arrive just
            # after the end they explain: hold the end until the builder's final line is in.
            # A builder killed mid-build sends none, hence the bound. Without a build (a missing
            # ref, a cached image) nothing is held.
            if launch.building and not launch.log_ended and self._final_line_wait > 0:
                launch.pending_end = payload
                asyncio.get_running_loop().call_later(
                    self._final_line_wait, self._release_end, launch
                )
                return None
        line_id = event.event_id if isinstance(event, BuildLog) else ""
        entry = self._append(launch, payload, line_id)
        if isinstance(event, BuildLog) and event.final:
            launch.log_ended = True
            self._release_end(launch)
        return entry

    @contextlib.contextmanager
    def watching(self, launch: LaunchProgress) -> Iterator[None]:
        """Count a client streaming `launch` while the block runs; the last one to leave an
        unfinished launch starts the abandon grace."""
        launch.watchers += 1
        try:
            yield
        finally:
            launch.watchers -= 1
            if launch.watchers == 0 and self._abandonable(launch) and not self.closing:
                asyncio.get_running_loop().call_later(
                    self._abandon_grace, self._abandon_if_unwatched, launch
                )

    def _abandonable(self, launch: LaunchProgress) -> bool:
        return not (launch.finished or launch.pending_end is not None or launch.build_only)

    def _abandon_if_unwatched(self, launch: LaunchProgress) -> None:
        # A client that came back in the meantime, or an end that came first, keeps the launch.
        if launch.watchers or not self._abandonable(launch) or self.closing:
            return
        self._append(
            launch,
            {
                "phase": "failed",
                "reason": ABANDONED_REASON,
                "message": "The launch was cancelled: nobody watched it for "
                f"{self._abandon_grace:.0f} s, so its session was not started. "
                "Launch the repository again.\n",
                "launch_id": launch.launch_id,
            },
        )
        self._on_abandoned(launch.launch_id)

    def _release_end(self, launch: LaunchProgress) -> None:
        """Append the held end, if any (on the final line, or when the wait is over)."""
        payload, launch.pending_end = launch.pending_end, None
        if payload is not None and not launch.finished:
            self._append(launch, payload)

    def _append(self, launch: LaunchProgress, payload: Payload, line_id: str = "") -> Entry:
        before = launch.held_bytes
        entry = launch.append(payload, line_id)
        self._total_bytes += launch.held_bytes - before
        if self._total_bytes > self._max_total_bytes:
            self.prune()
        return entry

    def prune(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        expired = [
            launch_id
            for launch_id, launch in self._launches.items()
            if (launch.finished_at is not None and now - launch.finished_at > self._retention)
            or now - launch.updated_at > self._retention * 24
        ]
        for launch_id in expired:
            self._total_bytes -= self._launches.pop(launch_id).held_bytes
        while len(self._launches) > 1 and (
            len(self._launches) > self._max_launches or self._total_bytes > self._max_total_bytes
        ):
            _, oldest = self._launches.popitem(last=False)
            self._total_bytes -= oldest.held_bytes

    def close(self) -> None:
        """Shutting down: wake every listener so its stream ends."""
        self.closing = True
        for read in self._reads:
            read.cancel()
        for launch in self._launches.values():
            launch.wake()

    def launches(self) -> Iterable[LaunchProgress]:
        return self._launches.values()
