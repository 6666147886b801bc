"""Follow and replay a launch through the started stack: the event log, one trace across the
services, /metrics of each service, the launch archive, and logs without secrets (issue 7)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bindery.bus import Bus
from bindery.bus.eventlog import read, replay
from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo, notebook
from tests.support.stack import (
    HEALTH_PORTS,
    VHOST,
    Stack,
    build_path,
    launch,
    launch_events,
    own_vhost,
    stop_session,
)

REPLAY_VHOST = f"{VHOST}-replay"
LAUNCH_HISTOGRAM = "bindery_launch_duration_seconds_count"


def metrics_urls(stack: Stack) -> dict[str, str]:
    urls = {s: f"http://127.0.0.1:{port}/metrics" for s, port in HEALTH_PORTS.items()}
    urls["gateway"] = f"{stack.gateway}/metrics"
    return urls


async def scrape(
    http: aiohttp.ClientSession, url: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with http.get(url) as resp:
        assert resp.status == 200, url
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def launches_ok(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    return samples.get((LAUNCH_HISTOGRAM, frozenset({("status", "success")})), 0.0)


@pytest.fixture(scope="module")
def repo(repos: Path) -> Path:
    path = repos / "observed"
    make_repo(path, {"index.ipynb": notebook("print('observed')")})
    return path


@pytest.fixture(scope="module")
async def observed(stack: Stack, http: aiohttp.ClientSession, repo: Path) -> dict[str, Any]:
    """One launch that builds, with the scheduler's launch count before it."""
    before = launches_ok(await scrape(http, metrics_urls(stack)["scheduler"]))
    events = await launch(http, stack.gateway, build_path(f"file://{repo}", "main"))
    assert events[-1]["phase"] == "ready", events[-1]
    return {"events": events, "ready": events[-1], "launches_before": before}


@pytest.fixture(scope="module")
async def failed(stack: Stack, http: aiohttp.ClientSession, repo: Path) -> dict[str, Any]:
    events = await launch(http, stack.gateway, build_path(f"file://{repo}", "no-such-ref"))
    assert events[-1]["phase"] == "failed", events[-1]
    return events[-1]


def spans_of(stack: Stack, launch_id: str) -> list[dict[str, Any]]:
    path = stack.log_dir / "traces.jsonl"
    spans = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    ids = {
        s["context"]["trace_id"]
        for s in spans
        if s.get("attributes", {}).get("bindery.launch_id") == launch_id
    }
    return [s for s in spans if s["context"]["trace_id"] in ids]


def archived(stack: Stack, launch_id: str) -> dict[str, Any] | None:
    return next(iter(stack.archived(launch_id)), None)


@pytest.fixture
def replay_url() -> Iterator[str]:
    with own_vhost(REPLAY_VHOST) as url:
        yield url


async def test_events_read_back_in_order_and_replay_into_a_fresh_vhost(
    stack: Stack, observed: dict[str, Any], replay_url: str
) -> None:
    launch_id = observed["ready"]["launch_id"]
    url = stack.env["BINDERY_AMQP_URL"]
    recorded = [r async for r in read(url, launch_id=launch_id)]
    types = [r.event.type for r in recorded]
    expected = ["launch-requested", "ref-resolved", "build-started", "image-built"]
    expected += ["pod-scheduled", "pod-ready"]
    assert [t for t in types if t in expected] == expected, types
    assert recorded[0].producer == "gateway" and recorded[-1].producer == "scheduler"

    into = Bus(replay_url, "replay", connect_timeout=10)
    await into.connect()
    try:
        count = await replay(read(url, launch_id=launch_id), into)
    finally:
        await into.close()
    assert count == len(recorded)
    there = [r async for r in read(replay_url, launch_id=launch_id)]
    assert [(r.event, r.producer) for r in there] == [(r.event, r.producer) for r in recorded]


async def test_one_trace_spans_every_service_that_handled_the_launch(
    stack: Stack, observed: dict[str, Any]
) -> None:
    launch_id = observed["ready"]["launch_id"]
    services = {f"bindery-{s}" for s in ("gateway", "resolver", "builder", "scheduler", "archiver")}

    def whole_trace() -> list[dict[str, Any]] | None:
        spans = spans_of(stack, launch_id)
        seen = {s["resource"]["attributes"]["service.name"] for s in spans}
        return spans if services <= seen else None

    spans = await eventually(whole_trace, within=30, what="a span of every service")
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    names = {s["name"] for s in spans}
    for stage in ("resolve", "build", "placement", "container.start", "readiness"):
        assert stage in names, (stage, sorted(names))
    assert any(name.startswith("build.") for name in names), "the build's steps have spans"


async def test_every_service_serves_metrics_and_the_launch_histogram_counted_it(
    stack: Stack, http: aiohttp.ClientSession, observed: dict[str, Any]
) -> None:
    for service, url in metrics_urls(stack).items():
        samples = await scrape(http, url)
        assert any(name.startswith("bindery_") for name, _ in samples), service
    after = launches_ok(await scrape(http, metrics_urls(stack)["scheduler"]))
    assert after == observed["launches_before"] + 1
    builder = await scrape(http, metrics_urls(stack)["builder"])
    assert builder.get(("bindery_builds_total", frozenset({("status", "success"), ("reason", "")})))


async def test_show_names_the_failing_service_and_reason(
    stack: Stack, failed: dict[str, Any]
) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bindery.cli", "events", "show", failed["launch_id"]],
        env={**stack.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "failed in resolver (ref_not_found)" in result.stdout.splitlines()[0]
    assert "no-such-ref" in result.stdout


async def test_the_archive_holds_both_launches_without_an_address(
    stack: Stack, observed: dict[str, Any], failed: dict[str, Any]
) -> None:
    ready = await eventually(
        lambda: archived(stack, observed["ready"]["launch_id"]),
        within=30,
        what="the ready launch archived",
    )
    assert ready["schema"] == "binderhub.jupyter.org/launch" and ready["version"] == 6
    assert ready["status"] == "success" and ready["provider"] == "Git" and ready["built"]
    assert len(ready["ref"]) == 40
    assert ready["duration_seconds"]["build"] > 0 and ready["duration_seconds"]["launch"] > 0
    lost = await eventually(
        lambda: archived(stack, failed["launch_id"]), within=30, what="the failed launch archived"
    )
    assert lost["status"] == "failure" and lost["failure_reason"] == "ref_not_found"
    assert lost["failed_service"] == "resolver"
    for record in (ready, lost):
        assert "127.0.0.1" not in json.dumps({k: v for k, v in record.items() if k != "origin"})


async def test_log_lines_of_a_launch_carry_its_trace_and_never_a_secret(
    stack: Stack, observed: dict[str, Any]
) -> None:
    launch_id = observed["ready"]["launch_id"]
    trace_ids = {s["context"]["trace_id"].removeprefix("0x") for s in spans_of(stack, launch_id)}
    token, secret = observed["ready"]["token"], stack.env["BINDERY_SESSION_SECRET"]
    lines = 0
    for path in stack.log_dir.glob("*.log"):
        text = path.read_text(errors="replace")
        assert token not in text, f"the session token is in {path.name}"
        assert secret not in text, f"the session secret is in {path.name}"
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("launch_id") == launch_id:
                lines += 1
                assert entry.get("trace_id") in trace_ids, (path.name, entry)
    assert lines, "the services logged the launch"


async def test_an_archiver_killed_mid_launch_archives_it_once_with_its_earlier_stages(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    """Killed (SIGKILL) while the launch builds, the archiver had taken the launch's first events
    off its queue and acknowledged them; the one started next reads them back from the event
    log, so the launch's one archive line still has its build."""
    repo = repos / "archiver-kill"
    make_repo(repo, {"index.ipynb": notebook("print('archived across a kill')")})
    events: list[dict[str, Any]] = []
    killed = False
    async for event in launch_events(http, stack.gateway, build_path(f"file://{repo}", "main")):
        events.append(event)
        if event["phase"] == "building" and not killed:
            victim = stack.processes.pop("archiver")
            victim.kill()
            await asyncio.to_thread(victim.wait)
            killed = True
            await asyncio.to_thread(stack.start, "archiver")
    ready = events[-1]
    assert ready["phase"] == "ready", events[-3:]
    stop_session(ready["launch_id"])
    record = await eventually(
        lambda: archived(stack, ready["launch_id"]), within=30, what="the launch archived"
    )
    assert record["status"] == "success" and record["built"]
    assert record["duration_seconds"]["build"] > 0, "the stages before the kill are kept"
    await asyncio.sleep(2)  # a moment for a twin line
    assert len(stack.archived(ready["launch_id"])) == 1, "archived once"
