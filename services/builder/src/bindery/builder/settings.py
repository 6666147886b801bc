"""Builder settings (`BINDERY_*` environment variables)."""

from __future__ import annotations

import socket
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from bindery.builder import conda
from bindery.builder.baseimage import UV, debian_pythons, python_sources
from bindery.builder.job import (
    CranMirrorSetting,
    NixChannelSetting,
    NixSubstituterSetting,
    PushCompression,
    RegistryMirrorSetting,
)
from bindery.builder.pythons import DEFAULT_PYTHON, Fallback
from bindery.builder.sandbox import DEFAULT_USER
from bindery.builder.sources import ProviderHosts
from bindery.settings import PackageIndexSettings, Profile

_PUBLIC = ProviderHosts()


GiB = 1024**3


def _known_pythons(versions: list[str]) -> list[str]:
    unknown = sorted(set(versions) - set(python_sources()))
    if unknown or not versions:
        raise ValueError(
            f"no base image recipe for Python {', '.join(unknown) or '(none given)'}: the "
            f"versions are {', '.join(python_sources())}"
        )
    return versions


class BuilderSettings(PackageIndexSettings):
    """`ca_bundle` and `index_url` are in `PackageIndexSettings`: sessions get them too."""

    health_port: int = 8592
    """Where this service's /health and /metrics listen (on `health_host`): each service has a
    port of its own, so all of them run side by side on one machine."""

    max_concurrent_builds: int = 2
    """Builds are CPU-bound (pip, compilers, apt): two keep both cores of the machines Bindery
    runs on busy without one build starving the other."""

    prefetch: int = 8
    """Deliveries this replica holds at once. Those beyond the running builds wait for a build
    slot, holding their delivery, so that launches of an image already building join that build
    instead of queueing behind other repositories. Small, because every held delivery counts
    against RabbitMQ's consumer_timeout (2 h in config/rabbitmq.conf)."""

    build_timeout: float = 3600.0
    """An hour: mybinder.org-sized environments build in minutes, and a build still running after
    this is stuck (a postBuild waiting for input, a download that never ends). Well under the
    broker's consumer_timeout, so a build never loses its delivery."""

    build_memory_limit: int = 4 * GiB
    """Per build, all its steps and tools together (its cgroup; swap not allowed). Above it the
    build is killed and the launch fails with reason 'oom'; two builds at this limit leave most
    of a 24 GiB machine to the sessions."""

    build_pids_limit: int = Field(default=4096, ge=0)
    """Processes and threads per build (its cgroup): a fork bomb in a postBuild fails its own
    build instead of the host. Compilers with parallel jobs use a few hundred; 0 for none."""

    build_min_free_disk: int = Field(default=10 * GiB, ge=0)
    """No build starts while the build sandbox's disk (scripts/install.sh: BINDERY_BUILD_DISK)
    has less free space than this: the launch fails at once with reason 'no_capacity' instead
    of a build failing halfway. Ten GiB: the largest mybinder.org images are a few GiB, built
    in layers that need about twice that while they are committed."""

    build_user: str = DEFAULT_USER
    """The unprivileged host user builds run as (rootless podman, its own image store and
    disk); scripts/install.sh creates it. Never root: a Dockerfile could then reach the host."""

    index_forwarder_port: int = Field(default=8596, ge=8596, le=8599)
    """Where the forwarder of an index with credentials listens, on 127.0.0.1: one of the ports
    scripts/isolation.sh lets build steps reach there (8596-8599; one per builder replica on a
    host)."""

    conda_channel_alias: str = ""
    """conda's channel_alias: where environment.yml's channels are, channel NAME being
    `<alias>/NAME` (https://conda.anaconda.org for the public channels, or a mirror). Only
    names are taken from environment.yml, never URLs, so builds fetch from this host only.
    Set: environment.yml becomes a conda environment of its own (/srv/conda/envs/notebook, its
    Python from the channel), as repo2docker makes it. Empty (the default, as this machine
    reaches no conda host): environment.yml installs its pip: section and its conda
    dependencies as the PyPI distributions conda-forge's name mapping says they are; so does a
    build whose channel does not answer, saying so in its log."""

    conda_default_channels: list[str] = Field(default_factory=lambda: list(conda.DEFAULT_CHANNELS))
    """The channels of an environment.yml that lists none, or lists `defaults`: conda-forge,
    as repo2docker (Anaconda's own `defaults` channels are not under the alias)."""

    conda_pkgs_dir: str = conda.DEFAULT_PKGS_DIR
    """conda's package cache: rattler's verified, extracted packages and the channels' repodata,
    shared by all builds on this host and never in an image. Under the builder user's
    ~/.cache."""

    cran_mirror: CranMirrorSetting = ""
    """Where R builds (install.R, DESCRIPTION) get packages, since CRAN and Posit Package Manager
    are not reachable from every Bindery: an http(s) URL of a CRAN mirror (an internal Posit
    Package Manager, a CRAN mirror), which sessions keep as R's repository, or an absolute
    directory laid out as a CRAN repository (src/contrib/PACKAGES and the tarballs: an rsync of
    CRAN, miniCRAN), mounted read-only into build steps only. Empty: R repositories fail at once,
    naming the hosts they need."""

    nix_channel: NixChannelSetting = ""
    """Where default.nix's <nixpkgs> comes from, since nixos.org is not reachable from every
    Bindery: a nixpkgs channel or tarball URL (`nix-channel --add`), or an absolute directory
    holding a nixpkgs tree (its default.nix at the top), mounted read-only into build steps and
    copied into the image. Either way images keep it as NIX_PATH's nixpkgs, since sessions
    evaluate default.nix again at start. Empty: a default.nix asking for <nixpkgs> or the
    network fails at once naming the hosts; one using builtins only still builds."""

    nix_substituters: list[NixSubstituterSetting] = Field(default_factory=list)
    """Binary caches Nix build steps substitute from instead of building (cache.nixos.org being
    unreachable): http(s) URLs or file:///DIR directories (mounted read-only into build steps
    only; add ?trusted=1 to accept paths not signed by a key Nix trusts). Empty: everything
    default.nix needs is built from source."""

    registry_mirror: RegistryMirrorSetting = ""
    """Where a Dockerfile's Docker Hub images (`FROM python:3.11`, `FROM docker.io/user/x`) are
    pulled from, as a registries.conf `[[registry.mirror]]` for docker.io: an http(s) URL of a
    registry, optionally with a path (`https://mirror.example.org/dockerhub` serves
    `python:3.11` as `mirror.example.org/dockerhub/library/python:3.11`; http means no TLS).
    The builder pulls them before the build, from where it alone may reach the local registry,
    so the local registry can be the mirror. Empty: such a build fails at once naming Docker
    Hub and this setting, unless the image is already in the build sandbox's store. Images of
    other registries are pulled from them directly."""

    image_prefix: str = "bindery/"
    """The resolver's (same variable): environment images are
    `<registry>/<image_prefix>env:<key>`, beside the repository images."""

    push_compression: PushCompression = "zstd"
    """How the layers of built images are compressed on their way to the registry. zstd, since
    both ends of the trip spend less CPU on it than on gzip: with a scientific stack's 331 MB
    environment layer on two cores, the push took 2.8 s against 3.5 s and a node's pull 2.7 s
    against 3.3 s. Podman, containerd and CRI-O nodes pull it; `gzip` for nodes whose engine
    cannot (older Docker Engines)."""

    max_repo_bytes: int = 1 * GiB
    """A checkout (history included) over this fails with 'too_large' before anything is built:
    mybinder.org-sized repositories are tens of MiB, and a bigger one would fill the image store."""

    max_log_bytes: int = 16 * 1024**2
    """A build writing more log than this is stopped with 'too_large': real builds write a few
    MiB at most, and a runaway loop printing forever would fill every gateway's buffer."""

    prune_after: float = 3600.0
    """Seconds after which the local copy of a per-commit image (pushed when built), a dangling
    image or an environment image beyond the newest kept ones is removed from podman's storage,
    when no container uses it. An hour: a launch repeated soon after its build starts from the
    local copy without a pull, and no build still running uses an image that old."""

    prune_keep_env_images: int = Field(default=20, ge=0)
    """Environment images kept locally whatever their age, newest first: they are the layer
    cache that lets a content-only commit build in seconds. Twenty: each holds only its own
    environment layers above the shared base image, typically tens to hundreds of MiB."""

    prune_interval: float = Field(default=600.0, ge=0)
    """Seconds between prune passes (the first at start): disk grows by at most what ten
    minutes of builds write, and a pass (one `podman images` and a few `rmi`) costs little.
    0: never prune, for hosts whose storage others clean (the test suites, which share one)."""

    python_versions: Annotated[list[str], AfterValidator(_known_pythons)] = Field(
        default_factory=debian_pythons
    )
    """The Pythons repositories may ask for (runtime.txt, environment.yml), each on a base image
    scripts/base-image.sh builds (with the same variable set, it builds these): by default the
    ones Debian has (bullseye's 3.9, bookworm's 3.11, trixie's 3.13); 3.10, 3.12 and 3.14 come
    from `python_install_mirror`. The builder does not start while one has no base image."""

    python_install_mirror: str = ""
    """A mirror of python-build-standalone's GitHub releases (uv's UV_PYTHON_INSTALL_MIRROR),
    which scripts/base-image.sh has uv install the Pythons no Debian suite has from, e.g.
    `https://mirror.example.org/python-build-standalone`. Empty: only Debian's Pythons."""

    default_python: str = DEFAULT_PYTHON
    """The Python of a repository that asks for none (repo2docker's default is a moving target;
    Debian bookworm's is the one Bindery's own services run on); one of `python_versions`."""

    python_fallback: Fallback = "nearest"
    """A repository asking for a Python not in `python_versions`: `nearest` builds it on the
    closest version of the same major (the newer of two as close), with a warning in its build
    log and on the launch page; `refuse` fails the build, naming the versions there are."""

    recently_built: int = 256
    """How many images this replica remembers having built, so launches that queued behind a
    build are answered at once instead of running repo2docker again to find the image present."""

    builder_replica: str = Field(default="", pattern=r"^[a-z0-9._-]{0,64}$")
    """This replica's name, which names its queue of sticky builds. Empty: `<host>-<health
    port>`, stable across restarts on one host, so a restarted replica takes its queue (and the
    launches waiting in it) back; give each replica of a StatefulSet its pod name."""

    # Where data repositories are fetched from: the resolver's settings of the same names (one
    # BINDERY_ZENODO_URL serves both), so a record is fetched from the host it was resolved on.
    # Records are only ever fetched from these hosts, whatever their metadata says.
    zenodo_url: str = _PUBLIC.zenodo_url
    """Zenodo, where records' files are fetched from."""

    figshare_url: str = _PUBLIC.figshare_url
    """Figshare's site."""

    figshare_api_url: str = _PUBLIC.figshare_api_url
    """Figshare's API, which lists an article's files."""

    figshare_download_url: str = _PUBLIC.figshare_download_url
    """Figshare serves files from a host of their own (ndownloader), not from its API's."""
    hydroshare_url: str = _PUBLIC.hydroshare_url
    """HydroShare, where resources' files are fetched from."""

    dataverse_hosts: list[str] = Field(default_factory=lambda: list(_PUBLIC.dataverse_hosts))
    """The Dataverse installations datasets are fetched from."""

    dataverse_scheme: str = _PUBLIC.dataverse_scheme
    """How they are reached: https; http only for tests' servers."""

    swh_api_url: str = _PUBLIC.swh_api_url
    """Software Heritage's API, which directories and revisions are fetched through."""

    ckan_hosts: list[str] = Field(default_factory=list)
    """CKAN sites builds may fetch from; empty: any site the resolver accepted (it refuses sites
    resolving to internal addresses). Files come only from the dataset's own site."""

    @model_validator(mode="after")
    def _mirrored_pythons(self) -> BuilderSettings:
        from_uv = [v for v in self.python_versions if python_sources()[v] == UV]
        if from_uv and not self.python_install_mirror:
            raise ValueError(
                f"Python {', '.join(from_uv)} comes from uv: set BINDERY_PYTHON_INSTALL_MIRROR"
            )
        return self

    def provider_hosts(self) -> ProviderHosts:
        return ProviderHosts(
            zenodo_url=self.zenodo_url,
            figshare_url=self.figshare_url,
            figshare_api_url=self.figshare_api_url,
            figshare_download_url=self.figshare_download_url,
            hydroshare_url=self.hydroshare_url,
            dataverse_hosts=tuple(self.dataverse_hosts),
            dataverse_scheme=self.dataverse_scheme,
            swh_api_url=self.swh_api_url,
            ckan_hosts=tuple(self.ckan_hosts),
        )

    def replica_name(self) -> str:
        return self.builder_replica or f"{socket.gethostname().lower()}-{self.health_port}"

    def allowed_schemes(self) -> tuple[str, ...]:
        """The repository URL schemes builds fetch: https only, as the fetch crosses the
        internet and nothing else authenticates the host; locally also http, git and ssh (the
        tests' servers on loopback) and file://."""
        if self.profile is Profile.LOCAL:
            return ("https", "http", "git", "ssh", "file")
        return ("https",)
