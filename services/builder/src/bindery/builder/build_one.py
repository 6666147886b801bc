"""One build in its own process.

``python -m bindery.builder.build_one --provider=P --repo=URL --ref=VERSION --image=NAME [--push]``

In: the provider, its repository URL and resolved version (a commit, a record version) and the
image name, all validated here (they come from strangers; sources.py has the rules per provider).
Git-like providers are cloned by repo2docker's Git content provider; data repositories (Zenodo,
Figshare, Dataverse, HydroShare, CKAN, Software Heritage) are fetched by repo2docker's own
providers, pinned to the validated record (datarepos.py) rather than picked by their detect().
Out: one JSON object per line on stdout -- ``{"phase": ..., "message": ...}`` while it works, then
``{"phase": "built", ...}`` and exit 0, or ``{"phase": "failed", "reason": ..., "message": ...}``
and exit 1.

A process per build because repo2docker is not thread-safe: it chdirs into the checkout and
rewires the logging of the whole process.
"""

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

from repo2docker.app import Repo2Docker
from repo2docker.contentproviders import Git
from repo2docker.engine import BuildError, ImageLoadError
from repo2docker.utils import R2dState
from traitlets.config import Config

from bindery.builder import datarepos, nixpack, registrymirror
from bindery.builder.baseimage import base_images, debian_pythons
from bindery.builder.build import MAX_LINE_CHARS
from bindery.builder.buildpacks import BUILDPACKS, DEFAULT_BUILDPACK, BuildContext, BuildWarning
from bindery.builder.checkout import check_checkout
from bindery.builder.cran import check_mirror_setting
from bindery.builder.engine import PodmanEngine
from bindery.builder.pythons import DEFAULT_PYTHON, Fallback, Pythons
from bindery.builder.sandbox import DEFAULT_USER, Sandbox
from bindery.builder.sources import DEFAULT_SCHEMES, ProviderHosts, Source, check_source

# An image reference as the OCI distribution spec allows it, starting with no dash.
IMAGE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._/:-]{0,254}(@sha256:[0-9a-f]{64})?")


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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bindery.builder.build_one")
    parser.add_argument("--provider", default="git", help="the launch's provider (gh, zenodo, ...)")
    parser.add_argument("--repo", required=True, help="repository URL (or SWHID)")
    parser.add_argument("--ref", required=True, help="full commit SHA, or the record's version")
    parser.add_argument(
        "--provider-hosts", default="", help="ProviderHosts as JSON; default: the public services"
    )
    parser.add_argument("--image", required=True, help="name to tag (and push) the image as")
    parser.add_argument("--push", action="store_true", help="push the image once built")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        help="VERSION=IMAGE: the base image of a Python (repeatable; default: every Python of "
        "bindery.builder.baseimage)",
    )
    parser.add_argument("--default-python", default=DEFAULT_PYTHON)
    parser.add_argument("--python-fallback", choices=get_args(Fallback), default="nearest")
    parser.add_argument("--ca-bundle", default="", help="CA bundle handed to the build")
    parser.add_argument(
        "--sandbox-user", default=DEFAULT_USER, help="the unprivileged user podman runs as"
    )
    parser.add_argument(
        "--fetch-in-sandbox",
        action="store_true",
        help="fetch as the sandbox user, under its network rules (production)",
    )
    parser.add_argument("--push-tls-verify", action="store_true")
    parser.add_argument("--index-url", default="", help="package index handed to the build")
    parser.add_argument(
        "--index-lookup-url", default="", help="the same index from this host (default: the same)"
    )
    parser.add_argument("--conda-channel-alias", default="", help="empty: no conda channel")
    parser.add_argument(
        "--conda-default-channel",
        action="append",
        default=[],
        help="channel of an environment.yml listing none (repeatable; default conda-forge)",
    )
    parser.add_argument("--conda-pkgs-dir", default="", help="conda package cache")
    parser.add_argument(
        "--cran-mirror", default="", help="CRAN mirror URL or directory for R builds"
    )
    parser.add_argument("--nix-channel", default="", help="nixpkgs channel URL or directory")
    parser.add_argument(
        "--registry-mirror", default="", help="registry URL Docker Hub images are pulled from"
    )
    parser.add_argument(
        "--nix-substituter",
        action="append",
        default=[],
        help="Nix binary cache URL or file:///DIR (repeatable)",
    )
    parser.add_argument(
        "--env-repository",
        default="",
        help="environment images are <this>:<key>, pushed with --push; default: 'env' beside "
        "the image (registry/a/b:tag -> registry/a/env)",
    )
    parser.add_argument("--max-repo-bytes", type=int, default=0, help="0 for no limit")
    parser.add_argument(
        "--allow-scheme",
        action="append",
        default=[],
        help=f"URL scheme to accept (repeatable; default {', '.join(DEFAULT_SCHEMES)})",
    )
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    """Raise ValueError unless provider, repo, ref and images are what they claim to be. Sets
    ``args.source`` (the validated repository) and ``args.hosts``; an environment repository left
    empty becomes ``env`` beside the image."""
    args.hosts = (
        ProviderHosts.from_json(args.provider_hosts) if args.provider_hosts else ProviderHosts()
    )
    args.source = check_source(
        args.provider, args.repo, args.ref, args.hosts, tuple(args.allow_scheme) or DEFAULT_SCHEMES
    )
    args.cran_mirror = check_mirror_setting(args.cran_mirror)
    args.registry_mirror = registrymirror.check_mirror_setting(args.registry_mirror)
    args.nix_channel = nixpack.check_channel_setting(args.nix_channel)
    args.nix_substituter = [nixpack.check_substituter_setting(u) for u in args.nix_substituter]
    images = [tuple(pair.split("=", 1)) for pair in args.python if "=" in pair]
    if len(images) != len(args.python):
        raise ValueError(f"--python takes VERSION=IMAGE, not {args.python!r}")
    args.pythons = Pythons(
        tuple(images) or base_images(debian_pythons()),
        args.default_python,
        args.python_fallback,
    )
    if not args.env_repository:
        args.env_repository = args.image.rpartition(":")[0].rpartition("/")[0] + "/env"
    for image in (args.image, args.env_repository, *dict(args.pythons.images).values()):
        if IMAGE_PATTERN.fullmatch(image) is None:
            raise ValueError(f"{image!r} is not a valid image reference")


def make_app(args: argparse.Namespace) -> Repo2Docker:
    config = Config()
    config.PodmanEngine.ca_bundle = args.ca_bundle
    config.PodmanEngine.sandbox_user = args.sandbox_user
    config.PodmanEngine.push_tls_verify = args.push_tls_verify
    config.PodmanEngine.index_url = args.index_url
    app = _Repo2Docker(config=config)
    app.max_repo_bytes = args.max_repo_bytes
    app.source = args.source
    app.provider_hosts = args.hosts
    app.sandbox = Sandbox(args.sandbox_user)
    app.fetch_in_sandbox = args.fetch_in_sandbox
    app.repo = args.source.url
    app.ref = args.source.version
    app.output_image_spec = args.image
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
            env_repository=args.env_repository,
            push_env=args.push,
            index_url=args.index_lookup_url or args.index_url or BuildContext.index_url,
            ca_bundle=args.ca_bundle,
            conda_channel_alias=args.conda_channel_alias,
            conda_default_channels=tuple(args.conda_default_channel)
            or BuildContext.conda_default_channels,
            conda_pkgs_dir=args.conda_pkgs_dir or BuildContext.conda_pkgs_dir,
            cran_mirror=args.cran_mirror,
            nix_channel=args.nix_channel,
            nix_substituters=tuple(args.nix_substituter),
            registry_mirror=args.registry_mirror,
            repo_url=args.source.url,
            pythons=args.pythons,
        )
    }
    # repo2docker makes every pack with this one; the pack then takes its Python's.
    app.base_image = dict(args.pythons.images)[args.pythons.default]
    app.engine = "bindery-podman"
    # Makes repo2docker capture git's output into its log instead of our stdout.
    app.json_logs = True
    return app


def build(args: argparse.Namespace) -> Iterator[str]:
    """Build (and push) the image; yields the push's output lines. Raises on failure."""
    app = make_app(args)
    app.initialize()
    # initialize() installed its own handler; the protocol on stdout is ours.
    app.log.handlers = [_ProtocolHandler()]
    app.log.propagate = False
    app.start()
    if args.push:
        emit("pushing", f"Pushing {args.image}")
        engine = app.get_engine()
        assert isinstance(engine, PodmanEngine)
        yield from engine.push(args.image)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # An exception, not the default instant death: repo2docker's cleanup (the checkout) runs.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        validate(args)
    except ValueError as e:
        emit("failed", str(e), reason="invalid_request")
        return 1
    try:
        for line in build(args):
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
    emit("built", f"Built {args.image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
