"""`/metrics` serves Prometheus' text format with the bus's counts and queue depths (issue 7)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST, Gauge
from prometheus_client.parser import text_string_to_metric_families

from bindery import metrics


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_metrics_route_serves_parseable_text_refreshed_first() -> None:
    refreshed = asyncio.Event()

    async def refresh() -> None:
        metrics.QUEUE_DEPTH.labels("bindery.test").set(7)
        refreshed.set()

    metrics.EVENTS_CONSUMED.labels("pod-ready", "ok").inc()
    app = web.Application()
    app.router.add_get("/metrics", metrics.route(refresh))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await response.text()
    assert refreshed.is_set()
    assert sample(text, "bindery_queue_messages", queue="bindery.test") == 7
    assert sample(text, "bindery_events_consumed_total", event_type="pod-ready", outcome="ok") >= 1


async def test_in_progress_gauge_counts_running_calls() -> None:
    gauge = Gauge("bindery_test_in_progress", "test")
    inside = asyncio.Event()
    release = asyncio.Event()

    @metrics.tracks(gauge)
    async def work() -> None:
        inside.set()
        await release.wait()

    task = asyncio.create_task(work())
    await inside.wait()
    assert gauge._value.get() == 1
    release.set()
    await task
    assert gauge._value.get() == 0
