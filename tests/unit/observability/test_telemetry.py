"""Trace context crosses message headers; spans reach a JSON-lines file; log lines carry the
trace id and never a token (issue 7)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bindery import logs, telemetry
from bindery.settings import CommonSettings


def test_a_consumer_continues_the_publishers_trace(spans: InMemorySpanExporter) -> None:
    with telemetry.span("publish launch-requested"):
        headers = telemetry.inject({})
        publisher_trace = telemetry.trace_id()
    assert publisher_trace is not None, "inside a span there is a trace"
    assert headers["traceparent"].split("-")[1] == publisher_trace

    with telemetry.span("handle launch-requested", context=telemetry.extract(headers)):
        assert telemetry.trace_id() == publisher_trace
    assert telemetry.trace_id() is None, "outside any span there is no trace"
    consumer = spans.get_finished_spans()[-1]
    assert consumer.parent is not None and consumer.parent.trace_id == int(publisher_trace, 16)


def test_headers_without_trace_context_start_a_new_trace(spans: InMemorySpanExporter) -> None:
    with telemetry.span("handle", context=telemetry.extract({"other": 1})):
        assert telemetry.trace_id() is not None
    assert spans.get_finished_spans()[-1].parent is None


async def test_stage_decorator_makes_a_child_span(spans: InMemorySpanExporter) -> None:
    @telemetry.traced("resolve")
    async def resolve(x: int) -> int:
        return x + 1

    with telemetry.span("handle"):
        assert await resolve(1) == 2
    resolved, handled = spans.get_finished_spans()
    assert resolved.name == "resolve"
    assert resolved.parent is not None and resolved.parent.span_id == handled.context.span_id


def test_phase_spans_follow_a_builds_phases(spans: InMemorySpanExporter) -> None:
    phases = telemetry.PhaseSpans("build")
    with telemetry.span("build"):
        for phase in ("fetching", "building", "building", "pushing"):
            phases.enter(phase)
        phases.end()
    names = [s.name for s in spans.get_finished_spans()]
    assert names == ["build.fetching", "build.building", "build.pushing", "build"]


def test_file_exporter_writes_one_json_span_per_line(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(telemetry.JsonLinesSpanExporter(fd)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner"):
        pass
    provider.shutdown()
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["name"] for s in spans] == ["inner", "outer"]
    assert len({s["context"]["trace_id"] for s in spans}) == 1


def test_the_file_exporter_needs_a_file() -> None:
    with pytest.raises(SystemExit, match="BINDERY_TRACE_FILE"):
        telemetry.configure("test", CommonSettings(trace_exporter="file", trace_file=""))


def test_log_lines_carry_the_trace_id_and_no_token(
    spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("test", "json", "info")
    try:
        log = structlog.get_logger("test")
        with telemetry.span("handle pod-ready"):
            trace_id = telemetry.trace_id()
            log.info(
                "launch.ready", token="s3cr3t-token", url="http://x/user/a/?token=s3cr3t-token"
            )
    finally:
        # The configuration writes to this test's captured stderr, closed after it.
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["trace_id"] == trace_id
    assert "s3cr3t-token" not in json.dumps(line)


async def test_a_build_request_opens_a_trace_or_joins_the_callers() -> None:
    seen: list[str | None] = []

    async def handler(_request: web.Request) -> web.Response:
        seen.append(telemetry.trace_id())
        return web.Response()

    app = web.Application(middlewares=[telemetry.http_middleware(("/build/",))])
    app.router.add_get("/build/{tail:.*}", handler)
    app.router.add_get("/health", handler)
    caller = "0af7651916cd43dd8448eb211c80319c"
    async with TestClient(TestServer(app)) as client:
        await client.get(
            "/build/git/x/main", headers={"traceparent": f"00-{caller}-b7ad6b7169203331-01"}
        )
        await client.get("/build/git/x/main")
        await client.get("/health")
    assert seen[0] == caller
    assert seen[1] is not None and seen[1] != caller
    assert seen[2] is None, "other requests open no trace"
