"""One build in its own process: what runs inside the build process buildprocess.py starts.

``python -m bindery.builder.buildchild < job.json``

In: a BuildJob (bindery.builder.job) as JSON on stdin: the provider, its repository URL and
resolved version (a commit, a record version), the image name and this host's build options, all
validated here again with the model the service made it with (they come from strangers;
sources.py has the rules per provider).
Git-like providers are cloned by repo2docker's Git content provider; data repositories (Zenodo,
Figshare, Dataverse, HydroShare, CKAN, Software Heritage) are fetched by repo2docker's own
providers, pinned to the validated record (datarepos.py) rather than picked by their detect().
Out: one JSON object per line on stdout -- ``{"phase": ..., "message": ...}`` while it works, then
``{"phase": "built", ...}`` and exit 0, or ``{"phase": "failed", "reason": ..., "message": ...}``
and exit 1.

A process per build because repo2docker is not thread-safe: it chdirs into the checkout and
rewires the logging of the whole process.
"""

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from repo2docker.app import Repo2Docker
from repo2docker.contentproviders import Git
from repo2docker.engine import BuildError, ImageLoadError
from repo2docker.utils import R2dState
from traitlets.config import Config

from bindery.builder import datarepos
from bindery.builder.buildpacks import BUILDPACKS, DEFAULT_BUILDPACK, BuildContext, BuildWarning
from bindery.builder.buildprocess import MAX_LINE_CHARS
from bindery.builder.checkout import check_checkout
from bindery.builder.engine import PodmanEngine
from bindery.builder.job import BuildJob, problems
from bindery.builder.sandbox import Sandbox
from bindery.builder.sources import ProviderHosts, Source


class CloneFailed(Exception):
    """The repository could not be fetched at the requested commit."""


class TooLarge(Exception):
    """The checked-out repository is over the size limit."""


def emit(phase: str, message: str = "", **fields: Any) -> None:
    """Write one protocol line to stdout."""
    record = {"phase": phase, "message": message[:MAX_LINE_CHARS], **fields}
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class _ProtocolHandler(logging.Handler):
    """Turns repo2docker's log records (which carry a ``phase``) into protocol lines."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().rstrip("\r\n")
        if message:
            warning = isinstance(record.msg, BuildWarning)
            emit("warning" if warning else str(getattr(record, "phase", "building")), message)


class _Repo2Docker(Repo2Docker):  # type: ignore[misc]
    """repo2docker whose fetch failures are told apart from build failures, and whose fetch
    runs as the sandbox user when ``fetch_in_sandbox``."""

    max_repo_bytes = 0
    source: Source
    provider_hosts = ProviderHosts()
    sandbox = Sandbox()
    fetch_in_sandbox = False

    def fetch(self, url: str, ref: str, checkout_path: str) -> None:
        try:
            if self.fetch_in_sandbox:
                self.sandbox.hand_over(Path(checkout_path))
                _as_user(self.sandbox, lambda: self._fetch(url, ref, checkout_path))
            else:
                self._fetch(url, ref, checkout_path)
        except Exception as e:
            raise CloneFailed(f"Could not fetch {url} at {ref}: {e}") from e
        check_checkout(Path(checkout_path))
        size = tree_size(checkout_path)
        if self.max_repo_bytes and size > self.max_repo_bytes:
            raise TooLarge(
                f"The repository is {size / 2**20:.0f} MiB with its history, over this Bindery's "
                f"limit of {self.max_repo_bytes / 2**20:.0f} MiB."
            )

    def _fetch(self, url: str, ref: str, checkout_path: str) -> None:
        if self.source.is_git:
            super().fetch(url, ref, checkout_path)
            return
        self.log.info(
            f"Fetching {self.source.url} ({self.source.provider} {self.source.version})\n",
            extra={"phase": R2dState.FETCHING},
        )
        for line in datarepos.fetch(self.source, self.provider_hosts, checkout_path):
            self.log.info(line, extra={"phase": R2dState.FETCHING})


def _as_user(sandbox: Sandbox, work: Callable[[], None]) -> None:
    """Run ``work`` in a child process as the sandbox user; raise with its error if it fails.

    Its connections are then the sandbox user's, which scripts/isolation.sh refuses the host,
    the LAN and every private range at connect time: a name that resolved to a public address
    when the link was resolved and to 127.0.0.1 now, a redirect, a submodule, all are checked
    by the kernel when they connect.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        code = 1
        try:
            account = sandbox.account
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            os.environ.update(sandbox.environment())
            work()
            code = 0
        except BaseException as e:  # whatever it is, the parent reports it
            os.write(write_end, str(e).encode(errors="replace")[:MAX_LINE_CHARS])
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as errors:
        error = errors.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(error or "the fetch stopped unexpectedly")


def tree_size(path: str) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def make_app(job: BuildJob) -> Repo2Docker:
    request, options = job.request, job.options
    config = Config()
    config.PodmanEngine.ca_bundle = options.ca_bundle
    config.PodmanEngine.sandbox_user = options.sandbox_user
    config.PodmanEngine.push_tls_verify = options.push_tls_verify
    config.PodmanEngine.push_compression = options.push_compression
    config.PodmanEngine.index_url = options.index_url
    app = _Repo2Docker(config=config)
    app.max_repo_bytes = options.max_repo_bytes
    app.source = job.source
    app.provider_hosts = options.provider_hosts
    app.sandbox = Sandbox(options.sandbox_user)
    app.fetch_in_sandbox = options.fetch_in_sandbox
    app.repo = job.source.url
    app.ref = job.source.version
    app.output_image_spec = request.image
    # We push ourselves, after the build, so pushing is its own phase with its own failure.
    app.push = False
    app.run = False
    # The base image's user; repo2docker would default to whoever runs it (root, refused).
    app.user_id = 1000
    app.user_name = "jovyan"
    # Only git: the URL is validated, so the Local provider could only ever match a host path a
    # stranger named. Data repositories bypass detection altogether (_Repo2Docker.fetch).
    app.content_providers = [Git]
    app.buildpacks = BUILDPACKS
    app.default_buildpack = DEFAULT_BUILDPACK
    app.extra_build_kwargs = {
        "bindery": BuildContext(
            env_repository=job.env_repository,
            push_env=request.push,
            index_url=options.index_lookup_url or options.index_url or BuildContext.index_url,
            ca_bundle=options.ca_bundle,
            conda_channel_alias=options.conda_channel_alias,
            conda_default_channels=options.conda_default_channels,
            conda_pkgs_dir=options.conda_pkgs_dir,
            cran_mirror=options.cran_mirror,
            nix_channel=options.nix_channel,
            nix_substituters=options.nix_substituters,
            registry_mirror=options.registry_mirror,
            repo_url=job.source.url,
            pythons=options.pythons,
        )
    }
    # repo2docker makes every pack with this one; the pack then takes its Python's.
    app.base_image = dict(options.pythons.images)[options.pythons.default]
    app.engine = "bindery-podman"
    # Makes repo2docker capture git's output into its log instead of our stdout.
    app.json_logs = True
    return app


def build(job: BuildJob) -> Iterator[str]:
    """Build (and push) the image; yields the push's output lines. Raises on failure."""
    app = make_app(job)
    app.initialize()
    # initialize() installed its own handler; the protocol on stdout is ours.
    app.log.handlers = [_ProtocolHandler()]
    app.log.propagate = False
    app.start()
    if job.request.push:
        emit("pushing", f"Pushing {job.request.image}")
        engine = app.get_engine()
        assert isinstance(engine, PodmanEngine)
        yield from engine.push(job.request.image)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # An exception, not the default instant death: repo2docker's cleanup (the checkout) runs.
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run(sys.stdin.buffer.read())


def run(job_json: bytes) -> int:
    """Build the job ``job_json`` holds, telling how it goes on stdout; the exit status."""
    try:
        job = BuildJob.from_json(job_json)
    except ValidationError as e:
        emit("failed", problems(e), reason="invalid_request")
        return 1
    try:
        for line in build(job):
            emit("pushing", line.rstrip("\n"))
    except CloneFailed as e:
        emit("failed", str(e), reason="clone_failed")
        return 1
    except TooLarge as e:
        emit("failed", str(e), reason="too_large")
        return 1
    except ImageLoadError as e:
        emit("failed", str(e), reason="push_failed")
        return 1
    except (BuildError, ValueError, RuntimeError) as e:
        # repo2docker raises ValueError/RuntimeError for a malformed repository (apt.txt,
        # runtime.txt, both binder/ and .binder/): a failed step of this build all the same.
        emit("failed", str(e), reason="step_failed")
        return 1
    emit("built", f"Built {job.request.image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
