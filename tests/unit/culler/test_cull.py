"""The culler's decisions, with the sessions' own account of their activity faked: who is asked,
what their answers change, and what a restart starts from."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bindery.culler.cull import Culler, NoAnswer
from bindery.events import Event, IdleDetected, PodReady, PodStopped, SessionActivity, StopReason
from bindery.runtimes import Session
from tests.support.launches import pod_ready

T0 = datetime(2026, 1, 1, tzinfo=UTC)
IDLE = 600


def ready(name: str, at: datetime) -> PodReady:
    return pod_ready(
        "l-" + name, session=name, node="n", image="i", target=f"http://{name}", time=at
    )


def activity(name: str, at: datetime) -> SessionActivity:
    return SessionActivity(launch_id="l-" + name, session=name, last_activity=at)


class Sessions:
    """What each session's Jupyter says (a time, None, or NoAnswer), and who was asked."""

    def __init__(self) -> None:
        self.answers: dict[str, datetime | NoAnswer | None] = {}
        self.asked: list[tuple[str, str]] = []

    async def ask(self, session: str, target: str) -> datetime | None:
        self.asked.append((session, target))
        answer = self.answers.get(session)
        if isinstance(answer, NoAnswer):
            raise answer
        return answer


class Harness:
    def __init__(self, max_age: float = 12 * 3600) -> None:
        self.published: list[Event] = []
        self.sessions = Sessions()
        self.culler = Culler(IDLE, max_age, self.publish, self.sessions.ask)

    async def publish(self, event: Event) -> None:
        self.published.append(event)

    def stopped(self) -> list[tuple[str, StopReason]]:
        return [(e.session, e.reason) for e in self.published if isinstance(e, IdleDetected)]


@pytest.fixture
def h() -> Harness:
    return Harness()


async def test_idle_sessions_are_culled_once_and_active_ones_kept(h: Harness) -> None:
    h.culler.observe(ready("idle", T0))
    h.culler.observe(ready("busy", T0))
    h.culler.observe(activity("busy", T0 + timedelta(minutes=9)))

    await h.culler.check(T0 + timedelta(minutes=11))
    assert h.stopped() == [("idle", StopReason.IDLE)]
    [request] = h.published
    assert isinstance(request, IdleDetected) and request.idle_seconds == 11 * 60
    await h.culler.check(T0 + timedelta(minutes=12))
    assert len(h.published) == 1, "a stop already requested is not requested again at once"

    h.culler.observe(PodStopped(launch_id="l-idle", session="idle", reason=StopReason.IDLE))
    await h.culler.check(T0 + timedelta(minutes=20))
    assert h.stopped() == [("idle", StopReason.IDLE), ("busy", StopReason.IDLE)]


async def test_only_sessions_idle_by_the_culler_s_view_are_asked(h: Harness) -> None:
    h.culler.observe(ready("used", T0))
    h.culler.observe(ready("quiet", T0))
    h.culler.observe(activity("used", T0 + timedelta(minutes=5)))
    await h.culler.check(T0 + timedelta(minutes=11))
    assert h.sessions.asked == [("quiet", "http://quiet")]


async def test_a_busy_kernel_keeps_its_session_however_long_it_runs(h: Harness) -> None:
    h.culler.observe(ready("computing", T0))
    for minutes in range(11, 45):  # a check every minute
        now = T0 + timedelta(minutes=minutes)
        h.sessions.answers["computing"] = now  # what JupyterActivity answers for a busy kernel
        await h.culler.check(now)
    assert h.stopped() == []
    assert len(h.sessions.asked) == 4, "asked once per idle period, not at every check"
    h.sessions.answers["computing"] = T0 + timedelta(minutes=45)  # the run ended
    await h.culler.check(T0 + timedelta(minutes=54))
    assert h.stopped() == []
    await h.culler.check(T0 + timedelta(minutes=56))
    assert h.stopped() == [("computing", StopReason.IDLE)]


async def test_kernel_and_terminal_activity_counts_from_when_it_happened(h: Harness) -> None:
    h.culler.observe(ready("typing", T0))
    h.sessions.answers["typing"] = T0 + timedelta(minutes=8)  # the last keystroke in a terminal
    await h.culler.check(T0 + timedelta(minutes=11))
    assert h.stopped() == []
    await h.culler.check(T0 + timedelta(minutes=18, seconds=1))
    assert h.stopped() == [("typing", StopReason.IDLE)]


async def test_a_session_that_does_not_answer_keeps_its_last_known_activity(h: Harness) -> None:
    h.culler.observe(ready("silent", T0))
    h.culler.observe(activity("silent", T0 + timedelta(minutes=3)))
    h.sessions.answers["silent"] = NoAnswer("ConnectionRefusedError")
    await h.culler.check(T0 + timedelta(minutes=12))
    assert h.stopped() == []
    await h.culler.check(T0 + timedelta(minutes=14))
    assert h.stopped() == [("silent", StopReason.IDLE)]


async def test_sessions_past_max_age_are_culled_whatever_they_claim() -> None:
    h = Harness(max_age=3600)
    h.culler.observe(ready("old", T0))
    h.culler.observe(activity("old", T0 + timedelta(minutes=61)))
    h.sessions.answers["old"] = T0 + timedelta(minutes=62)
    await h.culler.check(T0 + timedelta(minutes=62))
    assert h.stopped() == [("old", StopReason.MAX_AGE)]
    assert h.sessions.asked == []


async def test_a_failed_publish_fails_the_check_and_the_next_one_requests_the_rest(
    h: Harness,
) -> None:
    for name in ("a", "b"):
        h.culler.observe(ready(name, T0))
    down = True

    async def publish(event: Event) -> None:
        if down:
            raise TimeoutError("broker")
        h.published.append(event)

    h.culler.publish = publish
    with pytest.raises(TimeoutError):
        await h.culler.check(T0 + timedelta(minutes=11))
    down = False
    await h.culler.check(T0 + timedelta(minutes=11, seconds=30))
    assert sorted(h.stopped()) == [("a", StopReason.IDLE), ("b", StopReason.IDLE)]


async def test_sessions_are_asked_a_bounded_number_at_a_time() -> None:
    running = most = 0

    async def ask(session: str, target: str) -> datetime | None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return None

    async def publish(event: Event) -> None:
        return None

    culler = Culler(IDLE, 12 * 3600, publish, ask, ask_concurrency=7)
    for n in range(50):
        culler.observe(ready(f"s{n}", T0))
    await culler.check(T0 + timedelta(hours=1))
    assert most == 7


async def test_a_redelivered_pod_ready_never_moves_activity_back(h: Harness) -> None:
    h.culler.observe(ready("s", T0))
    h.culler.observe(activity("s", T0 + timedelta(minutes=8)))
    h.culler.observe(ready("s", T0))
    await h.culler.check(T0 + timedelta(minutes=11))
    assert h.stopped() == []


def session(name: str, started: datetime) -> Session:
    return Session(name, "n", "l-" + name, "i", "r", started, f"http://{name}", running=True)


async def test_after_a_restart_activity_comes_from_the_log_and_the_sessions(h: Harness) -> None:
    """Sessions started hours ago: the one with recent activity in the event log and the one
    whose kernel ran a minute ago are kept; the one with neither is stopped at once."""
    now = T0 + timedelta(hours=3)
    h.culler.adopt([session(name, T0) for name in ("in-log", "in-kernel", "idle")])
    h.culler.observe(activity("in-log", now - timedelta(minutes=4)))  # replayed from the log
    h.sessions.answers["in-kernel"] = now - timedelta(minutes=1)
    await h.culler.check(now)
    assert h.stopped() == [("idle", StopReason.IDLE)]
    assert sorted(s for s, _ in h.sessions.asked) == ["idle", "in-kernel"]


async def test_without_the_event_log_every_session_gets_an_idle_period_from_the_restart(
    h: Harness,
) -> None:
    restart = T0 + timedelta(hours=3)
    h.culler.adopt([session("unknown", T0)])
    h.culler.presume_active(restart)
    await h.culler.check(restart + timedelta(minutes=9))
    assert h.stopped() == []
    await h.culler.check(restart + timedelta(minutes=11))
    assert h.stopped() == [("unknown", StopReason.IDLE)]
