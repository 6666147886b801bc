"""The build job: everything one build process needs, in one validated model.

In: a BuildRequest (the launch's provider, repository URL, resolved version and image, from a
ref-resolved event: strings a stranger's link shaped) and BuildOptions (how this host builds:
the builder's settings, made once at start by app.py). Out: a BuildJob, as JSON for the build
process (``to_json``) and back from it (``from_json``), or ValueError (pydantic's
ValidationError) saying what is wrong (``problems``).

The service makes the job and the build process (buildchild) reads it back with this same
model, so every rule runs on both sides and the build process takes nothing on trust: the
request is checked against the options' provider hosts and URL schemes (sources.py's rules),
images against the OCI reference grammar, mirrors as their settings are (cran.py, nixpack.py,
registrymirror.py).
"""

from __future__ import annotations

import re
from dataclasses import field
from functools import cached_property
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from bindery.builder import conda, cran, nixpack, registrymirror
from bindery.builder.baseimage import base_images, debian_pythons
from bindery.builder.pythons import DEFAULT_PYTHON, Pythons
from bindery.builder.sandbox import DEFAULT_USER
from bindery.builder.sources import DEFAULT_SCHEMES, ProviderHosts, Source, check_source

# An image reference as the OCI distribution spec allows it, starting with no dash.
IMAGE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._/:-]{0,254}(@sha256:[0-9a-f]{64})?")

# The mirror settings, checked (and normalised) the same way in the settings and in a job.
CranMirrorSetting = Annotated[str, AfterValidator(cran.check_mirror_setting)]
NixChannelSetting = Annotated[str, AfterValidator(nixpack.check_channel_setting)]
NixSubstituterSetting = Annotated[str, AfterValidator(nixpack.check_substituter_setting)]
RegistryMirrorSetting = Annotated[str, AfterValidator(registrymirror.check_mirror_setting)]
# How pushed layers are compressed: podman push --compression-format.
PushCompression = Literal["zstd", "gzip"]

# Unknown fields are refused, not dropped: a field one side has and the other lacks is a bug.
_STRICT = ConfigDict(extra="forbid")


def check_image(image: str) -> str:
    if IMAGE_PATTERN.fullmatch(image) is None:
        raise ValueError(f"{image!r} is not a valid image reference")
    return image


def _check_python_images(pythons: Pythons) -> Pythons:
    for _, image in pythons.images:
        check_image(image)
    return pythons


def _every_python() -> Pythons:
    return Pythons(base_images(debian_pythons()), DEFAULT_PYTHON)


@dataclass(frozen=True, config=_STRICT)
class BuildRequest:
    """What to build; not checked until it is part of a BuildJob, whose options say how."""

    repo_url: str
    ref: str
    image: str
    push: bool = True
    provider: str = "git"
    """The launch's provider: says how ``repo_url`` and ``ref`` are read and fetched."""


@dataclass(frozen=True, config=_STRICT)
class BuildOptions:
    """How this host builds. The builder's settings fill it in (app.build_options); the
    defaults are for a build with no limits, as the tests run one."""

    timeout: float = 3600.0
    pythons: Annotated[Pythons, AfterValidator(_check_python_images)] = field(
        default_factory=_every_python
    )
    """The base image of each Python; by default every version of bindery.builder.baseimage,
    the default Python its default."""
    ca_bundle: str = ""
    memory_limit: int = 0
    """Bytes for the whole build (its cgroup, swap included); 0 for none."""
    pids_limit: int = 0
    """Processes and threads for the whole build; 0 for none."""
    min_free_disk: int = 0
    """Below this many free bytes on the sandbox's disk, no build starts."""
    sandbox_user: str = DEFAULT_USER
    fetch_in_sandbox: bool = False
    """Clone and download as the sandbox user, whose connections the network rules check
    (production); else as the builder, which may read local paths (file:// in the local
    profile)."""
    cgroup_prefix: str = "build-"
    """Names this replica's build cgroups (``<prefix><12 hex digits>``)."""
    push_tls_verify: bool = False
    push_compression: PushCompression = "zstd"
    allowed_schemes: tuple[str, ...] = DEFAULT_SCHEMES
    index_url: str = ""
    """The package index as build steps reach it; empty: PyPI."""
    index_lookup_url: str = ""
    """The same index as the build process reaches it on this host; empty: ``index_url``."""
    conda_channel_alias: str = ""
    conda_default_channels: tuple[str, ...] = conda.DEFAULT_CHANNELS
    conda_pkgs_dir: str = conda.DEFAULT_PKGS_DIR
    cran_mirror: CranMirrorSetting = ""
    """The cran_mirror setting (bindery.builder.cran); empty: none."""
    nix_channel: NixChannelSetting = ""
    nix_substituters: tuple[NixSubstituterSetting, ...] = ()
    """The nix_channel and nix_substituters settings (bindery.builder.nixpack)."""
    registry_mirror: RegistryMirrorSetting = ""
    """The registry_mirror setting (bindery.builder.registrymirror); empty: none."""
    env_repository: str = ""
    """Environment images are ``<this>:<key>``; empty: ``env`` beside the image."""
    max_repo_bytes: int = 0
    max_log_bytes: int = 0
    provider_hosts: ProviderHosts = field(default_factory=ProviderHosts)
    """Where the data-repository providers are: the only hosts their records are fetched from."""
    # Time a stopped build gets to fail its step and let podman clean up, before SIGKILL.
    kill_grace: float = 10.0


@dataclass(frozen=True, config=_STRICT)
class BuildJob:
    """A request checked against the options it is built with."""

    request: BuildRequest
    options: BuildOptions

    @model_validator(mode="after")
    def _check(self) -> Self:
        check_image(self.request.image)
        check_image(self.env_repository)
        _ = self.source  # checks provider, repository URL and version
        return self

    @cached_property
    def source(self) -> Source:
        """The validated repository at its version: what is fetched."""
        request, options = self.request, self.options
        return check_source(
            request.provider,
            request.repo_url,
            request.ref,
            options.provider_hosts,
            options.allowed_schemes,
        )

    @property
    def env_repository(self) -> str:
        """Where environment images go: the option, or ``env`` beside the image
        (registry/a/b:tag -> registry/a/env)."""
        image = self.request.image
        return self.options.env_repository or image.rpartition(":")[0].rpartition("/")[0] + "/env"

    def to_json(self) -> bytes:
        return _JOB.dump_json(self)

    @staticmethod
    def from_json(data: str | bytes) -> BuildJob:
        return _JOB.validate_json(data)


_JOB = TypeAdapter(BuildJob)


def problems(error: ValidationError) -> str:
    """What is wrong, in the words of the rules that refused it."""
    messages = []
    for problem in error.errors(include_url=False):
        if problem["type"] == "value_error":  # a rule of ours: its own message says it all
            messages.append(str(problem["ctx"]["error"]))
            continue
        where = ".".join(str(part) for part in problem["loc"])
        messages.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(messages)
