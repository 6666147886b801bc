from datetime import UTC, datetime, timedelta

from bindery.culler.cull import Culler
from bindery.events import Event, IdleDetected, PodReady, PodStopped, SessionActivity, StopReason

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ready(name: str, at: datetime) -> PodReady:
    return PodReady(launch_id="l-" + name, session=name, node="n", image="i", target="t", time=at)


async def test_idle_sessions_are_culled_once_and_active_ones_kept() -> None:
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    culler = Culler(idle_timeout=600, max_age=12 * 3600, publish=publish)
    culler.observe(ready("idle", T0))
    culler.observe(ready("busy", T0))
    culler.observe(
        SessionActivity(launch_id="l-busy", session="busy", last_activity=T0 + timedelta(minutes=9))
    )

    await culler.check(T0 + timedelta(minutes=11))
    assert [(e.session, e.reason) for e in published if isinstance(e, IdleDetected)] == [
        ("idle", StopReason.IDLE)
    ]
    await culler.check(T0 + timedelta(minutes=12))
    assert len(published) == 1, "a stop already requested is not requested again at once"

    culler.observe(PodStopped(launch_id="l-idle", session="idle", reason=StopReason.IDLE))
    await culler.check(T0 + timedelta(minutes=20))
    assert [e.session for e in published if isinstance(e, IdleDetected)] == ["idle", "busy"]


async def test_sessions_past_max_age_are_culled_even_when_active() -> None:
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    culler = Culler(idle_timeout=600, max_age=3600, publish=publish)
    culler.observe(ready("old", T0))
    culler.observe(
        SessionActivity(launch_id="l-old", session="old", last_activity=T0 + timedelta(minutes=61))
    )
    await culler.check(T0 + timedelta(minutes=62))
    assert [e.reason for e in published if isinstance(e, IdleDetected)] == [StopReason.MAX_AGE]
