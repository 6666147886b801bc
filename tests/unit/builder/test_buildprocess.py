"""The build process's protocol, how failures are told apart, and a run's limits."""

import json
from pathlib import Path

import pytest

from bindery.builder.buildprocess import (
    LINE_LIMIT,
    MAX_LINE_CHARS,
    BuildLine,
    FailureReason,
    SpareProcess,
    classify_failure,
    parse_line,
    run_build,
)
from bindery.builder.job import BuildOptions, BuildRequest
from bindery.events import BuildLog

SHA = "5b1503fb6fd79906a6d75af32d4a014b5f31dc61"
TAIL = [f"line {i}" for i in range(20)]


def test_parse_line_separates_log_from_the_final_record() -> None:
    assert parse_line('{"phase": "building", "message": "STEP 1"}') == (
        BuildLine("building", "STEP 1"),
        None,
    )
    final = {"phase": "failed", "reason": "clone_failed", "message": "no"}
    assert parse_line(json.dumps(final)) == (BuildLine("failed", "no"), final)
    # Not the protocol (a warning, a traceback): still log, never an error.
    assert parse_line("Traceback (most recent call last):") == (
        BuildLine("log", "Traceback (most recent call last):"),
        None,
    )
    assert parse_line("[1, 2]") == (BuildLine("log", "[1, 2]"), None)


def test_long_lines_are_cut_whatever_wrote_them() -> None:
    """A line up to the pipe's limit (1 MiB) once failed BuildLog's validation, and every later
    line of that build was lost; every buffer downstream is bounded by a line's size."""
    long = "x" * (LINE_LIMIT - 1)
    for raw in (long, json.dumps({"phase": "building", "message": long})):
        line, _ = parse_line(raw)
        assert len(line.message) == MAX_LINE_CHARS
        BuildLog(launch_id="a" * 32, image="i", phase=line.phase, message=line.message)


def test_timeout_wins_over_everything() -> None:
    reason, _ = classify_failure(timed_out=True, returncode=-9, final=None, tail=TAIL)
    assert reason is FailureReason.TIMEOUT


@pytest.mark.parametrize(
    ("returncode", "tail"),
    [
        (137, TAIL),
        (-9, TAIL),
        (1, [*TAIL, "Killed"]),
        (1, [*TAIL, 'error building at STEP "RUN ./postBuild": exit status 137']),
    ],
)
def test_killed_builds_are_out_of_memory(returncode: int, tail: list[str]) -> None:
    final = {"phase": "failed", "reason": "step_failed", "message": "x"}
    reason, message = classify_failure(
        timed_out=False, returncode=returncode, final=final, tail=tail
    )
    assert reason is FailureReason.OOM
    assert "memory" in message


def test_a_failed_step_carries_the_log_tail() -> None:
    final = {"phase": "failed", "reason": "step_failed", "message": "Building x failed"}
    reason, message = classify_failure(timed_out=False, returncode=1, final=final, tail=TAIL)
    assert reason is FailureReason.STEP_FAILED
    assert message.splitlines()[-len(TAIL) :] == TAIL


def test_a_failed_step_is_named() -> None:
    final = {"phase": "failed", "reason": "step_failed", "message": "Building x failed"}
    step = "STEP 9/9: RUN ./postBuild"
    reason, message = classify_failure(
        timed_out=False, returncode=1, final=final, tail=TAIL, step=step
    )
    assert reason is FailureReason.STEP_FAILED
    assert message.startswith(f"The build step {step!r} failed.")
    assert message.splitlines()[-len(TAIL) :] == TAIL


def test_other_reasons_come_from_the_final_record() -> None:
    final = {"phase": "failed", "reason": "clone_failed", "message": "Could not fetch"}
    assert classify_failure(timed_out=False, returncode=1, final=final, tail=TAIL) == (
        FailureReason.CLONE_FAILED,
        "Could not fetch",
    )


@pytest.mark.parametrize(
    "final", [None, {"phase": "failed", "message": "crash"}, {"phase": "failed", "reason": "?"}]
)
def test_unexplained_failures_are_internal_errors(final: dict[str, str] | None) -> None:
    reason, _ = classify_failure(timed_out=False, returncode=1, final=final, tail=TAIL)
    assert reason is FailureReason.INTERNAL_ERROR


async def test_run_build_reports_an_invalid_request() -> None:
    lines: list[BuildLine] = []

    async def on_line(line: BuildLine) -> None:
        lines.append(line)

    request = BuildRequest("ftp://host/repo", SHA, "127.0.0.1:5000/bindery/x:y")
    result = await run_build(request, on_line, BuildOptions(timeout=60))
    assert not result.ok
    assert result.reason is FailureReason.INVALID_REQUEST
    assert "scheme" in result.message
    # The outcome is the launch's to announce: as a log line it is no phase of its own.
    assert lines[-1].phase == "building" and "scheme" in lines[-1].message


async def test_a_build_writing_too_much_log_is_stopped_as_too_large(tmp_path: Path) -> None:
    lines: list[BuildLine] = []

    async def on_line(line: BuildLine) -> None:
        lines.append(line)

    # Nothing to fetch there: the build process says so in more than ten bytes.
    request = BuildRequest(f"file://{tmp_path}/none", SHA, "127.0.0.1:5000/bindery/x:y")
    options = BuildOptions(timeout=60, max_log_bytes=10, allowed_schemes=("file",))
    result = await run_build(request, on_line, options)
    assert result.reason is FailureReason.TOO_LARGE
    assert "log" in result.message


async def test_a_build_runs_in_the_process_started_ahead_of_it(tmp_path: Path) -> None:
    options = BuildOptions(timeout=60, allowed_schemes=("file",))
    spares = SpareProcess(options)
    spares.start()
    assert spares._spare is not None
    ahead = await spares._spare

    async def on_line(line: BuildLine) -> None:
        pass

    request = BuildRequest(f"file://{tmp_path}/none", SHA, "127.0.0.1:5000/bindery/x:y")
    try:
        result = await spares.run_build(request, on_line, options)
        assert result.reason is FailureReason.CLONE_FAILED
        # It ran this build and ended with it; the next build's is waiting.
        assert ahead.proc.returncode == 1
        assert spares._spare is not None
        waiting = await spares._spare
        assert waiting.proc.returncode is None
    finally:
        await spares.close()
    assert waiting.proc.returncode is not None
    assert not any(d.exists() for d in waiting.cgroup.directories)
