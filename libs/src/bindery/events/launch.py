"""Events of a launch's front half: the request, the resolved ref, and the terminal failure;
and the launch's context, which the resolver settles once and every later step carries.

Producers: gateway (launch-requested, launch-abandoned), resolver (ref-resolved), any service
(launch-failed). ref-resolved is routed by the resolver's decision (`RefResolved.route`):
`ref-resolved.build` to the builders, `ref-resolved.launch` to the scheduler,
`ref-resolved.done` to nobody that starts anything.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from bindery.events.base import Event, NextStep, register

MAX_SPEC_LENGTH = 4096
"""The longest spec a launch may have (as `/build/<provider>/<spec>` has it, percent-encoded):
a repository URL and ref fit in far less, and no stranger's link should make a service work on
megabytes. The gateway refuses a longer one before publishing, the event cannot carry one, and
the resolver's parser refuses one before any parsing or request."""


@register
class LaunchRequested(Event):
    """Someone asked for a session of `provider`/`spec` (BinderHub's /build/<provider>/<spec>)."""

    type = "launch-requested"

    provider: str = Field(min_length=1, max_length=32)
    spec: str = Field(min_length=1, max_length=MAX_SPEC_LENGTH)
    build_only: bool = False
    launch_host: str = Field(default="", max_length=2048)
    """The site the launch was made on (`https://host/`): its sessions' BINDER_LAUNCH_HOST."""


class RepoConfig(BaseModel):
    """Per-repository settings from the resolver's policy (`BINDERY_PER_REPO_QUOTA`,
    `BINDERY_HIGH_QUOTA_SPECS`, `BINDERY_SPEC_CONFIG`), applied by the scheduler. Only settings
    that take effect exist: any other key is refused (the resolver refuses it at start)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quota: int | None = Field(default=None, ge=1)
    """Concurrent sessions of this repository; None: the scheduler's `BINDERY_REPO_QUOTA`."""


class LaunchContext(BaseModel):
    """What a launch is, as the resolver settled it: every event after ref-resolved that needs
    it carries it whole, so no service re-derives (or re-joins by launch id) what another knew.

    `repo_url` is exactly what repo2docker's matching content provider's `detect()` accepts, and
    `resolved_ref` the version it names:
    - gh, gist, gl, git: a clone URL (https://github.com/owner/repo, https://gist.github.com/
      user/id.git, https://gitlab.com/group/project.git, the git URL as given) and a 40-hex commit.
    - zenodo: the record's landing URL `https://zenodo.org/records/<id>`; resolved_ref `<id>`
      (a concept DOI resolves to its latest version's record).
    - figshare: `https://figshare.com/articles/_/<id>/<version>`; resolved_ref `<id>.v<version>`.
    - hydroshare: `https://www.hydroshare.org/resource/<id>`; resolved_ref `<id>.v<modified epoch>`.
    - dataverse: `https://<installation>/dataset.xhtml?persistentId=doi:<doi>`; resolved_ref
      `<dataset id>.v<major>.<minor>` (repo2docker fetches the latest version).
    - ckan: the dataset URL (with `/history/<activity id>` when pinned); resolved_ref
      `<dataset>.v<modified epoch>` or `<dataset>.<activity id>`.
    - swhid: the core identifier `swh:1:dir:<hash>` or `swh:1:rev:<hash>`; resolved_ref `<hash>`.
    The git-like providers clone `repo_url` and check out `resolved_ref`; the data providers
    ignore the ref and fetch what `repo_url` names.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1, max_length=32)
    spec: str = Field(min_length=1, max_length=MAX_SPEC_LENGTH)
    repo_url: str
    ref: str
    resolved_ref: str
    repo_key: str = Field(description="stable per-repository key for quotas and sticky builds")
    repo_config: RepoConfig = Field(default_factory=RepoConfig)
    build_only: bool = False
    session_env: dict[str, str] = Field(default_factory=dict)
    """BinderHub's variables for the session (`bindery.providers.binder_env`): BINDER_REPO_URL,
    BINDER_REF_URL, BINDER_REQUEST, BINDER_PERSISTENT_REQUEST, BINDER_LAUNCH_HOST."""
    requested_at: datetime
    """When the launch was requested (its launch-requested's time): the scheduler starts
    sessions in that order, whatever order concurrent resolutions or builds finish in."""


@register
class RefResolved(Event):
    """The spec names one immutable version (`context`); `image` is the deterministic image for
    it, which the registry holds or not (`image_exists`). Its route is the resolver's decision."""

    type = "ref-resolved"
    version = 2
    steps = (NextStep.BUILD, NextStep.LAUNCH, NextStep.DONE)

    context: LaunchContext
    image: str
    image_exists: bool

    @property
    def route(self) -> NextStep:
        if not self.image_exists:
            return NextStep.BUILD
        return NextStep.DONE if self.context.build_only else NextStep.LAUNCH


class FailureReason(StrEnum):
    """Why a launch ended without a session; a person can act on each one differently."""

    INVALID_SPEC = "invalid_spec"
    BANNED = "banned"
    REF_NOT_FOUND = "ref_not_found"
    REPO_UNREACHABLE = "repo_unreachable"
    STEP_FAILED = "step_failed"
    CLONE_FAILED = "clone_failed"
    TIMEOUT = "timeout"
    OOM = "oom"
    TOO_LARGE = "too_large"
    NO_CAPACITY = "no_capacity"
    START_FAILED = "start_failed"
    INTERNAL = "internal"


@register
class LaunchFailed(Event):
    """Terminal: the launch ended without a session. `message` is meant for the person waiting."""

    type = "launch-failed"

    service: str
    reason: FailureReason
    message: str = Field(max_length=20_000)


@register
class LaunchAbandoned(Event):
    """Terminal: every client watching the launch left before it was ready and none came back
    within the grace period (`BINDERY_ABANDON_GRACE`). The scheduler starts no session for it
    (or stops the one it started); a build in progress may finish, for the cache."""

    type = "launch-abandoned"
