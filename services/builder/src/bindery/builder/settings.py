"""Builder settings (`BINDERY_*` environment variables)."""

from __future__ import annotations

from bindery.settings import CommonSettings, Profile

GiB = 1024**3


class BuilderSettings(CommonSettings):
    health_port: int = 8592

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
    """Per build step. Above it the step is killed and the launch fails with reason 'oom';
    two builds at this limit leave most of a 24 GiB machine to the sessions."""

    ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"
    """Handed to every build as a secret (never stored in an image), so pip, uv and git inside
    builds trust what the host trusts: TLS-intercepting proxies, private package indexes. Empty,
    or a path that does not exist, hands none."""

    base_image: str = ""
    """Empty: the base image scripts/base-image.sh builds from this package's baseimage/ files,
    whose name bindery.builder.baseimage computes."""

    recently_built: int = 256
    """How many images this replica remembers having built, so launches that queued behind a
    build are answered at once instead of running repo2docker again to find the image present."""

    def allowed_schemes(self) -> tuple[str, ...]:
        """The repository URL schemes builds accept: the resolver's, and file:// locally."""
        schemes = ("https", "http", "git", "ssh")
        return (*schemes, "file") if self.profile is Profile.LOCAL else schemes
