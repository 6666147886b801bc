"""Build requests, the build_one protocol and how failures are told apart."""

import json
import sys

import pytest

from bindery.builder import build_one
from bindery.builder.build import (
    LINE_LIMIT,
    MAX_LINE_CHARS,
    BuildLine,
    BuildOptions,
    BuildRequest,
    FailureReason,
    classify_failure,
    command,
    parse_line,
    run_build,
)
from bindery.builder.pythons import Pythons
from bindery.events import BuildLog

SHA = "5b1503fb6fd79906a6d75af32d4a014b5f31dc61"
TAIL = [f"line {i}" for i in range(20)]


def test_values_are_passed_so_they_cannot_be_read_as_options() -> None:
    request = BuildRequest("--upload-pack=touch /pwned", "-x", "-i", push=True)
    pythons = Pythons((("3.11", "localhost/b:1"),), "3.11")
    cmd = command(request, BuildOptions(pythons=pythons, ca_bundle="/ca.crt"))
    assert cmd[:3] == [sys.executable, "-m", "bindery.builder.build_one"]
    assert "--repo=--upload-pack=touch /pwned" in cmd
    assert "--ref=-x" in cmd and "--image=-i" in cmd
    assert {"--push", "--python=3.11=localhost/b:1", "--ca-bundle=/ca.crt"} <= set(cmd)
    args = build_one.parse_args(cmd[3:])
    assert (args.repo, args.ref, args.image) == ("--upload-pack=touch /pwned", "-x", "-i")
    with pytest.raises(ValueError, match="URL"):
        build_one.validate(args)


def test_the_registry_mirror_reaches_the_buildpacks() -> None:
    request = BuildRequest("https://example.org/r.git", SHA, "127.0.0.1:5000/b/r:1")
    cmd = command(request, BuildOptions(registry_mirror="http://127.0.0.1:5000/hub"))
    args = build_one.parse_args(cmd[3:])
    build_one.validate(args)
    context = build_one.make_app(args).extra_build_kwargs["bindery"]
    assert context.registry_mirror == "http://127.0.0.1:5000/hub"


@pytest.mark.parametrize(
    ("repo", "ref", "image", "problem"),
    [
        ("-oProxyCommand=x", SHA, "r/i:t", "URL"),
        ("/etc", SHA, "r/i:t", "URL"),
        ("file:///srv/repo", SHA, "r/i:t", "URL"),
        ("https://h/r x", SHA, "r/i:t", "URL"),
        ("https://h/r", "main", "r/i:t", "SHA"),
        ("https://h/r", "--orphan", "r/i:t", "SHA"),
        ("https://h/r", SHA, "-r/i:t", "image"),
        ("https://h/r", SHA, "R/i t", "image"),
    ],
)
def test_validation_rejects_what_strangers_could_abuse(
    repo: str, ref: str, image: str, problem: str
) -> None:
    args = build_one.parse_args([f"--repo={repo}", f"--ref={ref}", f"--image={image}"])
    with pytest.raises(ValueError, match=problem):
        build_one.validate(args)


def test_validation_accepts_a_commit_of_an_allowed_scheme() -> None:
    argv = ["--repo=file:///srv/repo", f"--ref={SHA}", "--image=127.0.0.1:5000/b/r:t"]
    build_one.validate(build_one.parse_args([*argv, "--allow-scheme=file"]))
    build_one.validate(build_one.parse_args(["--repo=https://h/o/r.git", *argv[1:]]))


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


async def test_run_build_reports_an_invalid_request_from_the_subprocess() -> None:
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


async def test_a_build_writing_too_much_log_is_stopped_as_too_large() -> None:
    lines: list[BuildLine] = []

    async def on_line(line: BuildLine) -> None:
        lines.append(line)

    request = BuildRequest("ftp://host/repo", SHA, "127.0.0.1:5000/bindery/x:y")
    result = await run_build(request, on_line, BuildOptions(timeout=60, max_log_bytes=10))
    assert result.reason is FailureReason.TOO_LARGE
    assert "log" in result.message
