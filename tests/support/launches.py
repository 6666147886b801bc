"""Launches as the resolver, the builder and the scheduler describe them, for tests that need
their events.

In: whatever of a launch a test cares about (a launch context's fields, the image, whether it
exists, its session). Out: a `LaunchContext`, and `ref-resolved`, `image-built` and `pod-ready`
events carrying one, with defaults for everything else, so no test builds a context field by
field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bindery.events import ImageBuilt, LaunchContext, PodReady, RefResolved
from bindery.naming import repo_key
from bindery.providers import binder_env

SHA = "5b1503fb6fd79906a6d75af32d4a014b5f31dc61"
IMAGE = "127.0.0.1:5000/bindery/r:1"


def launch_context(**fields: Any) -> LaunchContext:
    """A plain git launch of `https://example.org/r.git` at SHA, requested now; `fields`
    replace any of it (the repository key follows `repo_url` unless given)."""
    values: dict[str, Any] = {
        "provider": "git",
        "spec": "https%3A%2F%2Fexample.org%2Fr.git/HEAD",
        "repo_url": "https://example.org/r.git",
        "ref": "HEAD",
        "resolved_ref": SHA,
        "requested_at": datetime.now(UTC),
        **fields,
    }
    values.setdefault("repo_key", repo_key(values["repo_url"]))
    return LaunchContext.model_validate(values)


def github_launch_context(
    requested_at: datetime, resolved_ref: str, *, repo: str = "owner/repo", **fields: Any
) -> LaunchContext:
    """A launch of GitHub's `repo` at its branch main, resolved to `resolved_ref`, with the
    session variables the resolver gives it."""
    repo_url = f"https://github.com/{repo}"
    spec = f"{repo}/main"
    return launch_context(
        provider="gh",
        spec=spec,
        repo_url=repo_url,
        ref="main",
        resolved_ref=resolved_ref,
        requested_at=requested_at,
        session_env=binder_env("https://bindery.example/", "gh", spec, repo_url, resolved_ref),
        **fields,
    )


def ref_resolved(
    launch_id: str,
    *,
    image: str = IMAGE,
    image_exists: bool = False,
    context: LaunchContext | None = None,
    **context_fields: Any,
) -> RefResolved:
    """The resolver's ref-resolved for `launch_id`: `context`, or `launch_context(**fields)`."""
    return RefResolved(
        launch_id=launch_id,
        context=context or launch_context(**context_fields),
        image=image,
        image_exists=image_exists,
    )


def image_built(
    launch_id: str,
    *,
    image: str = IMAGE,
    duration_seconds: float = 1.0,
    context: LaunchContext | None = None,
    **context_fields: Any,
) -> ImageBuilt:
    """The builder's image-built for `launch_id`: `context`, or `launch_context(**fields)`."""
    return ImageBuilt(
        launch_id=launch_id,
        context=context or launch_context(**context_fields),
        image=image,
        duration_seconds=duration_seconds,
    )


def pod_ready(
    launch_id: str,
    *,
    session: str = "s",
    node: str = "node-1",
    image: str = IMAGE,
    target: str = "http://127.0.0.1:1",
    context: LaunchContext | None = None,
    time: datetime | None = None,
    **context_fields: Any,
) -> PodReady:
    """The scheduler's pod-ready for `launch_id`, published now or at `time`: `context`, or
    `launch_context(**fields)`."""
    return PodReady(
        launch_id=launch_id,
        session=session,
        node=node,
        image=image,
        target=target,
        context=context or launch_context(**context_fields),
        time=time or datetime.now(UTC),
    )
