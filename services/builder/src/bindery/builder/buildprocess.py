"""Runs one build process (``buildchild``) and tells how it went.

In: a BuildRequest (provider, repository URL, commit or record version, image name) and
BuildOptions (the host's setup, the data-repository providers' hosts included), made into one
BuildJob (bindery.builder.job) that the process reads on its stdin. A request the job refuses
fails as ``invalid_request`` without a process.
Out: every log line to an async callback as it comes, then a BuildResult with a failure reason
code when it failed: ``timeout``, ``oom``, ``step_failed`` (naming the step), ``too_large`` (the
repository, the log or the disk over its limit), ``clone_failed``, ``push_failed``,
``invalid_request``, ``disk_full`` (the sandbox's disk below its floor: no build started) or
``internal_error``.

The subprocess leads its own process group and runs in a cgroup of its own (its memory and
process limits; bindery.builder.cgroups), with its temporary files on the build sandbox's disk.
The service's builds run in processes started ahead of them (``SpareProcess``), their imports
done, so a build's first second is not Python starting.
A timeout or a cancelled build (the service stopping) ends it, the processes of its build
containers and anything else it started, and leaves podman's storage without stray build
containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from bindery.builder.cgroups import BuildCgroup
from bindery.builder.job import BuildJob, BuildOptions, BuildRequest, problems
from bindery.builder.sandbox import Sandbox


class FailureReason(StrEnum):
    TIMEOUT = "timeout"
    OOM = "oom"
    STEP_FAILED = "step_failed"
    TOO_LARGE = "too_large"
    CLONE_FAILED = "clone_failed"
    PUSH_FAILED = "push_failed"
    INVALID_REQUEST = "invalid_request"
    DISK_FULL = "disk_full"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class BuildLine:
    phase: str
    message: str


@dataclass(frozen=True)
class BuildResult:
    image: str
    reason: FailureReason | None
    message: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.reason is None


# How many trailing log lines a failure carries: enough to show the failing step.
TAIL_LINES = 20
# Buffer limit for one line of build output; buildchild cuts its messages well below this.
LINE_LIMIT = 1 << 20
# The longest message of one log line, however it was written: the log is for people (long
# progress bars and minified output are cut), and every line is held in memory by this builder
# (a joining launch's replay) and by every gateway (a launch's progress), whose buffers are
# bounded in bytes. A line over BuildLog's own limit would not even be published.
MAX_LINE_CHARS = 8192
# What a step killed by the kernel's OOM killer (SIGKILL, 128+9) leaves in podman's output.
OOM_PATTERN = re.compile(r"exit status 137|exit code:? 137|signal: killed|(^|\s)Killed\s*$")
# What a build out of room on the sandbox's disk leaves in podman's or a tool's output.
NO_SPACE_PATTERN = re.compile(r"no space left on device|ENOSPC|Disk quota exceeded", re.I)
# podman's announcement of each Dockerfile step: the last one seen before a failure is the step
# that failed.
STEP_PATTERN = re.compile(r"^STEP \d+/\d+: ")

OnLine = Callable[[BuildLine], Awaitable[None]]


# The build process: it reads its BuildJob from stdin, so nothing a stranger wrote is ever on a
# command line.
COMMAND = (sys.executable, "-m", "bindery.builder.buildchild")


def parse_line(raw: str) -> tuple[BuildLine, dict[str, Any] | None]:
    """A protocol line, and the record itself when it is the final one (built/failed).

    Anything that is not a protocol line (a warning on stderr, a traceback) is still log.
    Messages are cut at MAX_LINE_CHARS.
    """
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("phase"), str):
        return BuildLine("log", raw[:MAX_LINE_CHARS]), None
    line = BuildLine(record["phase"], str(record.get("message", ""))[:MAX_LINE_CHARS])
    return line, record if line.phase in ("built", "failed") else None


def classify_failure(
    *,
    timed_out: bool,
    returncode: int | None,
    final: dict[str, Any] | None,
    tail: Sequence[str],
    step: str = "",
    log_too_large: bool = False,
    oom_killed: bool = False,
    pids_limit_hit: int = 0,
) -> tuple[FailureReason, str]:
    """Why a build that did not succeed failed, and what to tell the user.

    ``oom_killed``: the build's cgroup saw the OOM killer; ``pids_limit_hit``: its process
    limit, when a fork was refused at it (0 otherwise)."""
    if timed_out:
        return FailureReason.TIMEOUT, "The build took too long and was stopped."
    if log_too_large:
        return FailureReason.TOO_LARGE, "The build wrote more log than allowed and was stopped."
    # The cgroup's count, buildchild itself killed, or a build step killed inside podman.
    if (
        oom_killed
        or returncode in (137, -signal.SIGKILL)
        or any(OOM_PATTERN.search(line) for line in tail)
    ):
        return FailureReason.OOM, "The build ran out of memory.\n" + "\n".join(tail)
    if any(NO_SPACE_PATTERN.search(line) for line in tail):
        return FailureReason.TOO_LARGE, (
            "The build ran out of disk space: the image is larger than this Bindery's build "
            "disk allows.\n" + "\n".join(tail)
        )
    if pids_limit_hit:
        failed = f"The build step {step!r} failed" if step else "The build failed"
        return FailureReason.STEP_FAILED, (
            f"{failed}: it started more than {pids_limit_hit} processes at once, this "
            "Bindery's limit per build.\nLast lines of its log:\n" + "\n".join(tail)
        )
    if final is not None and final.get("phase") == "failed":
        try:
            reason = FailureReason(str(final.get("reason")))
        except ValueError:
            reason = FailureReason.INTERNAL_ERROR
        if reason is FailureReason.STEP_FAILED:
            failed = f"The build step {step!r} failed" if step else "A build step failed"
            detail = str(final.get("message", "")) if not step else ""
            return reason, f"{failed}. {detail}\nLast lines of its log:\n" + "\n".join(tail)
        return reason, str(final.get("message", ""))
    return FailureReason.INTERNAL_ERROR, "The build stopped unexpectedly.\n" + "\n".join(tail)


async def run_build(
    request: BuildRequest,
    on_line: OnLine,
    options: BuildOptions,
    spares: SpareProcess | None = None,
) -> BuildResult:
    """Build (and push) ``request.image``, passing each log line to ``on_line`` as it comes;
    in the process ``spares`` started ahead of it, if any."""
    started = time.monotonic()
    try:
        job = BuildJob(request=request, options=options)
    except ValidationError as e:
        # As the build process would have told it, had it been started.
        message = problems(e)
        await on_line(BuildLine("building", message))
        return BuildResult(request.image, FailureReason.INVALID_REQUEST, message, 0.0)
    sandbox = Sandbox(options.sandbox_user)
    sandbox.prepare()
    free = shutil.disk_usage(sandbox.tmp).free
    if free < options.min_free_disk:
        return BuildResult(
            request.image,
            FailureReason.DISK_FULL,
            f"This Bindery's build disk has {free / 2**30:.1f} GiB free, below its floor of "
            f"{options.min_free_disk / 2**30:.1f} GiB, so it starts no build until old images "
            "are pruned. Please try again later.",
            0.0,
        )
    process = await (spares.take() if spares else _start(options, sandbox))
    cgroup = process.cgroup
    try:
        async with sandbox.building():
            outcome = await _run(job, on_line, process)
    finally:
        oom_killed, refused_forks = cgroup.oom_kills > 0, cgroup.refused_forks
        await asyncio.to_thread(cgroup.remove)
    seconds = time.monotonic() - started
    final = outcome.final
    succeeded = not outcome.timed_out and not outcome.log_too_large and outcome.returncode == 0
    if succeeded and final is not None and final["phase"] == "built":
        return BuildResult(request.image, None, str(final.get("message", "")), seconds)
    reason, message = classify_failure(
        timed_out=outcome.timed_out,
        returncode=outcome.returncode,
        final=final,
        tail=outcome.tail,
        step=outcome.step,
        log_too_large=outcome.log_too_large,
        oom_killed=oom_killed,
        pids_limit_hit=options.pids_limit if refused_forks else 0,
    )
    return BuildResult(request.image, reason, message, seconds)


@dataclass(frozen=True)
class _Outcome:
    """How the build process ended, as its output told."""

    timed_out: bool
    log_too_large: bool
    returncode: int | None
    final: dict[str, Any] | None
    """The last protocol record (built/failed), if any."""
    tail: tuple[str, ...]
    step: str
    """The last Dockerfile step announced."""


@dataclass(frozen=True)
class _Started:
    """A build process, waiting for its job on stdin, in its cgroup."""

    proc: asyncio.subprocess.Process
    cgroup: BuildCgroup


async def _start(options: BuildOptions, sandbox: Sandbox) -> _Started:
    """Start a build process in a new cgroup of its own (``options``' limits)."""
    cgroup = BuildCgroup(
        options.cgroup_prefix + secrets.token_hex(6), options.memory_limit, options.pids_limit
    )
    cgroup.create()

    def in_cgroup() -> None:
        cgroup.join()
        _end_with_parent()

    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        limit=LINE_LIMIT,
        preexec_fn=in_cgroup,
        # Checkouts and contexts on the sandbox's disk, where they are handed to its user.
        env={**os.environ, "TMPDIR": str(sandbox.tmp)},
    )
    return _Started(proc, cgroup)


class SpareProcess:
    """One build process started ahead of the next build: Python's start and the imports
    (repo2docker, pydantic; about 0.6 s of a core here) are done before the build comes.

    It waits, idle, in its own cgroup for its job on stdin, and is a build process like any
    other once taken. The next is started when a build ends, not beside the build on its
    cores; a build that finds none (two at once) starts its own. ``run_build`` is the
    coordinator's runner; ``close`` ends the one waiting.
    """

    def __init__(self, options: BuildOptions) -> None:
        self._options = options
        self._sandbox = Sandbox(options.sandbox_user)
        self._spare: asyncio.Task[_Started] | None = None
        self._closed = False

    def start(self) -> None:
        if self._spare is None and not self._closed:
            self._spare = asyncio.create_task(_start(self._options, self._sandbox))

    async def take(self) -> _Started:
        """The spare, or a process started now if there is none (or it died waiting)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            started = await spare
            if started.proc.returncode is None:
                return started
            await asyncio.to_thread(started.cgroup.remove)
        return await _start(self._options, self._sandbox)

    async def run_build(
        self, request: BuildRequest, on_line: OnLine, options: BuildOptions
    ) -> BuildResult:
        try:
            return await run_build(request, on_line, options, self)
        finally:
            self.start()

    async def close(self) -> None:
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is not None:
            started = await spare
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.proc.pid, signal.SIGKILL)
            await started.proc.wait()
            await asyncio.to_thread(started.cgroup.remove)


async def _run(job: BuildJob, on_line: OnLine, started: _Started) -> _Outcome:
    """Run ``job`` in the build process ``started``, relaying its lines; how it ended."""
    options = job.options
    proc, cgroup = started.proc, started.cgroup
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    final: dict[str, Any] | None = None
    step = ""
    log_bytes = 0
    log_too_large = False

    async def relay() -> None:
        nonlocal final, step, log_bytes, log_too_large
        assert proc.stdin is not None and proc.stdout is not None
        # A process that died at once left its job unread: its output tells why.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(job.to_json())
            await proc.stdin.drain()
        proc.stdin.close()
        async for raw in proc.stdout:
            line, record = parse_line(raw.decode(errors="replace").rstrip("\r\n"))
            if record is not None:
                final = record
                # Its phase is the launch's to announce (image-built, launch-failed): a log
                # line saying "failed" would end the launch for clients before its retry.
                line = BuildLine("building", line.message)
            else:
                tail.append(line.message)
                if STEP_PATTERN.match(line.message):
                    step = line.message
                    tail.clear()
            log_bytes += len(raw)
            if options.max_log_bytes and log_bytes > options.max_log_bytes:
                log_too_large = True
                await on_line(BuildLine("building", "The log is over its size limit: stopping."))
                return
            await on_line(line)
        await proc.wait()

    timed_out = False
    try:
        async with asyncio.timeout(options.timeout):
            await relay()
    except TimeoutError:
        timed_out = True
    finally:
        # On timeout, and on cancellation (the service stopping), the build must not live on.
        await _stop(proc, cgroup, options.kill_grace)
    return _Outcome(timed_out, log_too_large, proc.returncode, final, tuple(tail), step)


# prctl(2) option: a signal for this process when its parent dies.
PR_SET_PDEATHSIG = 1


def _end_with_parent() -> None:
    """In the build process, before it runs: SIGTERM when the builder dies, however it dies
    (SIGKILL included). The launch is then retried elsewhere, and an orphaned build must not go
    on building and pushing beside the retry."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def _stop(proc: asyncio.subprocess.Process, cgroup: BuildCgroup, grace: float) -> None:
    """End the build and everything it started, leaving podman's storage clean.

    A signal to podman leaves its build containers behind and the step's processes running (they
    are in a container's session, out of our process group's reach). Killing those processes
    instead fails the step, and podman then removes its containers itself and exits. The build
    process gets SIGTERM so that repo2docker removes its checkout. Whatever is left after
    ``grace`` is killed outright.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        # Again and again: podman may start the next step's container in the meantime.
        while proc.returncode is None and time.monotonic() < deadline:
            for pid in _step_processes(proc.pid, cgroup):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def _step_processes(root: int, cgroup: BuildCgroup) -> list[int]:
    """The build's processes outside the build process's group: those of build containers."""
    found = []
    for pid in cgroup.processes():
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) != root:
                found.append(pid)
    return found
