"""Sessions that ended by themselves: why each ended, and which seats no longer hold a session.

In: the runtime's exits (`Exit`: exit status, whether the OOM killer or a disk eviction ended
it) and, for the periodic reconciliation, the seats to check beside the sessions the runtime
lists. Out: the reason a pod-stopped gives, and the ended sessions the runtime's events missed.
Pure, so the decisions are tested without a runtime.

A Jupyter server exits by itself when its user shuts it down (File > Shut Down, `POST
/api/shutdown`: status 0), when it crashes, or when something outside Bindery kills it (`podman
kill`, the OOM killer). Its seat must be given back at once, or quotas count a phantom.
"""

from __future__ import annotations

from collections.abc import Iterable

from bindery.events import StopReason
from bindery.runtimes import Session
from bindery.runtimes.base import Exit
from bindery.scheduler.cluster import Seat


def stop_reason(ended: Exit) -> StopReason:
    if ended.disk_evicted:
        return StopReason.DISK
    if ended.oom_killed:
        return StopReason.OOM
    if ended.code == 0:
        return StopReason.SHUT_DOWN
    return StopReason.CRASHED


def ended_sessions(seats: Iterable[Seat], sessions: Iterable[Session]) -> list[Exit]:
    """How the session of each seat ended, for the seats whose session the runtime lists as
    stopped or no longer lists at all (then its exit status is unknown)."""
    listed = {session.name: session for session in sessions}
    ended = []
    for seat in seats:
        session = listed.get(seat.name)
        if session is None:
            ended.append(Exit(seat.name, seat.node))
        elif not session.running:
            ended.append(session.exit or Exit(seat.name, session.node))
    return ended
