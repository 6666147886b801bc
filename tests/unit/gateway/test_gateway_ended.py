"""The address of an ended session says why it ended: a page with a relaunch button for a
browser, the same facts as JSON for a program; the button launches the same repository and ref."""

from __future__ import annotations

from urllib.parse import quote

from bindery.events import PodStopped, StopReason
from tests.support.launches import pod_ready
from tests.unit.gateway.fakes import Harness

# Every test here runs through both lanes of the gateway (conftest.py).
BOTH_LANES = True

REPO = "https://example.org/owner/repo.git"
COMMIT = "c" * 40
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


async def ready_then_stopped(
    h: Harness, session: str, reason: StopReason, idle_seconds: float | None = None
) -> None:
    await h.handlers.on_event(
        pod_ready(
            "l1",
            session=session,
            node="n",
            image="img",
            target="http://127.0.0.1:1",
            repo_url=REPO,
            resolved_ref=COMMIT,
        )
    )
    await h.handlers.on_event(
        PodStopped(launch_id="l1", session=session, reason=reason, idle_seconds=idle_seconds)
    )


async def test_a_culled_session_shows_a_page_that_relaunches_the_same_ref(
    harness: Harness,
) -> None:
    await ready_then_stopped(harness, "s-idle", StopReason.IDLE, idle_seconds=600)
    page = await harness.client.get("/user/s-idle/lab", headers=HTML)
    assert page.status == 404 and page.content_type == "text/html"
    text = await page.text()
    assert "This session has ended" in text
    assert "nobody used it for 10 minutes" in text
    relaunch = f"/launch?repo={quote(REPO, safe='')}&amp;ref={COMMIT}"
    assert f'id="relaunch" href="{relaunch}"' in text

    launch = await harness.client.get(relaunch.replace("&amp;", "&"), allow_redirects=False)
    assert launch.status == 303
    assert launch.headers["Location"] == f"/v2/git/{quote(REPO, safe='')}/{COMMIT}"


async def test_a_program_gets_the_same_facts_as_json(harness: Harness) -> None:
    await ready_then_stopped(harness, "s-old", StopReason.MAX_AGE)
    answer = await harness.client.get("/user/s-old/api/status")
    assert answer.status == 404
    body = await answer.json()
    assert body["stopped"] == "max_age"
    assert "longest time a session may run" in body["message"]
    assert body["relaunch"].startswith("/launch?repo=")


async def test_a_session_shut_down_from_inside_says_so(harness: Harness) -> None:
    await ready_then_stopped(harness, "s-shut", StopReason.SHUT_DOWN)
    text = await (await harness.client.get("/user/s-shut/", headers=HTML)).text()
    assert "shut down from inside the session" in text and 'id="relaunch"' in text


async def test_a_session_whose_node_was_lost_says_so(harness: Harness) -> None:
    await ready_then_stopped(harness, "s-lost", StopReason.NODE_LOST)
    text = await (await harness.client.get("/user/s-lost/", headers=HTML)).text()
    assert "the machine it ran on stopped answering" in text and 'id="relaunch"' in text


async def test_an_unknown_session_is_a_plain_404_without_a_button(harness: Harness) -> None:
    page = await harness.client.get("/user/nobody/", headers=HTML)
    assert page.status == 404
    text = await page.text()
    assert "No session here" in text and 'id="relaunch"' not in text
    answer = await harness.client.get("/user/nobody/")
    assert (await answer.json())["stopped"] is None


async def test_a_hostile_repository_url_cannot_break_out_of_the_link(harness: Harness) -> None:
    await harness.handlers.on_event(
        pod_ready(
            "l2",
            session="s-x",
            node="n",
            image="img",
            target="http://127.0.0.1:1",
            repo_url='https://example.org/"><script>alert(1)</script>',
        )
    )
    await harness.handlers.on_event(
        PodStopped(launch_id="l2", session="s-x", reason=StopReason.IDLE)
    )
    text = await (await harness.client.get("/user/s-x/", headers=HTML)).text()
    assert "<script>" not in text
    assert 'href="/launch?repo=https%3A%2F%2Fexample.org%2F%22%3E%3Cscript%3E' in text
