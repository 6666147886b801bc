"""The builder's domain: an image the registry lacks becomes an image in it.

In: ref-resolved events whose image does not exist (routed `ref-resolved.build`). Out:
build-started, then image-built (carrying the launch's context on) or launch-failed with a
reason code, for the event's launch; and the build's log lines (on the logs channel), each
published once per build, marked with the build's id and the launch that started it.

One build per image at a time in this replica: a launch of an image that is already building
joins that build instead of building it again, as BinderHub does; its build-started names the
build, and the gateway shows it the log so far and every line after (progress.py). An image
built a moment ago is reported at once. Builds beyond ``max_concurrent_builds`` wait for a slot.

Every build has an id (``new_build_id``): its first log line names the address where its whole
log stays (the gateway's ``/api/builds/<id>/log``, read from the build-log stream), and its last
line, marked ``final``, says how it ended.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from bindery import telemetry
from bindery.builder import metrics
from bindery.builder.buildprocess import BuildLine, BuildResult, FailureReason, OnLine, run_build
from bindery.builder.job import BuildOptions, BuildRequest
from bindery.events import BuildLog, BuildStarted, Event, ImageBuilt, LaunchFailed, RefResolved
from bindery.events import FailureReason as LaunchFailure
from bindery.events.build import new_build_id

log = structlog.get_logger("bindery.builder")

Publish = Callable[[Event], Awaitable[None]]
Runner = Callable[[BuildRequest, OnLine, BuildOptions], Awaitable[BuildResult]]

# The launch-level reason for each way a build fails. A push or an invalid request is no fault of
# the repository: the person waiting can only retry, hence 'internal' and 'invalid_spec'.
LAUNCH_REASONS = {
    FailureReason.TIMEOUT: LaunchFailure.TIMEOUT,
    FailureReason.OOM: LaunchFailure.OOM,
    FailureReason.STEP_FAILED: LaunchFailure.STEP_FAILED,
    FailureReason.TOO_LARGE: LaunchFailure.TOO_LARGE,
    FailureReason.CLONE_FAILED: LaunchFailure.CLONE_FAILED,
    FailureReason.PUSH_FAILED: LaunchFailure.INTERNAL,
    FailureReason.INVALID_REQUEST: LaunchFailure.INVALID_SPEC,
    FailureReason.DISK_FULL: LaunchFailure.NO_CAPACITY,
    FailureReason.INTERNAL_ERROR: LaunchFailure.INTERNAL,
}
# LaunchFailed.message's limit.
MAX_FAILURE_MESSAGE = 20_000


@dataclass
class _Build:
    """A build in flight."""

    image: str
    launch_id: str
    """The launch that started it: its log lines carry this id (launches that join it learn
    the build's id from their build-started)."""
    build_id: str = field(default_factory=new_build_id)
    task: asyncio.Task[BuildResult] | None = None
    logs_broken: bool = False
    lines: int = 0
    """Log lines published so far: the next one's `seq`."""


class Builder:
    def __init__(
        self,
        options: BuildOptions,
        publish: Publish,
        *,
        replica: str,
        max_concurrent_builds: int,
        recently_built: int,
        run: Runner = run_build,
    ) -> None:
        self._options = options
        self._publish = publish
        self._replica = replica
        self._run = run
        self._slots = asyncio.Semaphore(max_concurrent_builds)
        self._builds: dict[str, _Build] = {}
        self._built: OrderedDict[str, BuildResult] = OrderedDict()
        self._remember = recently_built

    async def on_ref_resolved(self, event: RefResolved) -> None:
        done = self._built.get(event.image)
        if done is not None:
            await self._report(event, done)
            return
        build = self._builds.get(event.image)
        joining = build is not None
        if build is None:
            build = self._builds[event.image] = _Build(event.image, event.launch_id)
        await self._publish(
            BuildStarted(
                launch_id=event.launch_id,
                image=event.image,
                builder=self._replica,
                build_id=build.build_id,
            )
        )
        if not joining:
            build.task = asyncio.create_task(self._build(event, build))
            log.info(
                "build.started", image=event.image, repo=event.context.repo_url, id=build.build_id
            )
        else:
            log.info("build.joined", image=event.image, id=build.build_id)
        assert build.task is not None
        # Shielded: one launch's handler being cancelled must not end a build others follow.
        await self._report(event, await asyncio.shield(build.task))

    @metrics.in_progress
    @telemetry.traced("build")
    async def _build(self, event: RefResolved, build: _Build) -> BuildResult:
        context = event.context
        request = BuildRequest(
            _source_url(context.repo_url),
            context.resolved_ref,
            event.image,
            provider=context.provider,
        )
        phases = telemetry.PhaseSpans("build")

        async def on_line(line: BuildLine) -> None:
            phases.enter(line.phase)
            await self._publish_line(build, line)

        try:
            where = f"Build {build.build_id} on {self._replica}"
            await on_line(BuildLine("building", f"{where}: its log stays at {log_path(build)}"))
            async with self._slots:
                result = await self._run(request, on_line, self._options)
            ending = f"Build {build.build_id} " + (
                f"finished in {result.seconds:.1f} s" if result.ok else f"failed ({result.reason})"
            )
            await self._publish_line(build, BuildLine("building", ending), final=True)
        finally:
            phases.end()
            del self._builds[event.image]
        metrics.observe(result)
        if result.ok:
            self._built[event.image] = result
            while len(self._built) > self._remember:
                self._built.popitem(last=False)
            log.info("build.completed", image=event.image, seconds=round(result.seconds, 1))
        else:
            log.warning("build.failed", image=event.image, reason=str(result.reason))
        return result

    async def _publish_line(self, build: _Build, line: BuildLine, *, final: bool = False) -> None:
        """Logs are best effort: a broker that cannot take them must not fail the build, whose
        outcome still gets published (or retried) on its own."""
        if build.logs_broken:
            return
        try:
            await self._publish(
                BuildLog(
                    launch_id=build.launch_id,
                    image=build.image,
                    phase=line.phase,
                    message=line.message,
                    build_id=build.build_id,
                    seq=build.lines,
                    final=final,
                )
            )
            build.lines += 1
        except Exception as exc:
            build.logs_broken = True
            log.warning("build.log_publish_failed", image=build.image, error=str(exc))

    async def _report(self, event: RefResolved, result: BuildResult) -> None:
        if result.reason is None:
            await self._publish(
                ImageBuilt(
                    launch_id=event.launch_id,
                    context=event.context,
                    image=event.image,
                    duration_seconds=result.seconds,
                )
            )
            return
        await self._publish(
            LaunchFailed(
                launch_id=event.launch_id,
                service="builder",
                reason=LAUNCH_REASONS[result.reason],
                message=result.message[-MAX_FAILURE_MESSAGE:],
            )
        )


def log_path(build: _Build) -> str:
    """Where the gateway serves the build's whole log (gateway/buildlog.py)."""
    return f"/api/builds/{build.build_id}/log"


def _source_url(repo_url: str) -> str:
    """Builds take URLs only; a local Bindery's resolver also passes absolute paths."""
    return Path(repo_url).as_uri() if repo_url.startswith("/") else repo_url
