"""repo2docker's container engine for podman: ``podman build`` and ``podman push``.

In: repo2docker's calls (``build`` with the build context as a tar file object or a directory,
``inspect_image``).
Out: the lines podman prints, as repo2docker's log; images in the build sandbox's image store and
the registry.

Every podman command runs in the build sandbox (bindery.builder.sandbox): rootless, as an
unprivileged user, which is handed the build context and nothing else of the host. Pushes and
pulls alone run where the sandbox's network rules let them reach the local registry.

repo2docker's own docker engine needs ``docker buildx``, which podman lacks, and the published
repo2podman plugin does not match repo2docker 2026.4.0's engine API; hence this plugin, registered
as ``bindery-podman`` in the ``repo2docker.engines`` entry point group.
"""

import json
import subprocess
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from repo2docker.engine import BuildError, ContainerEngine, Image, ImageLoadError
from traitlets import Bool, Enum, Unicode

from bindery.builder.registrymirror import MissingBaseImage
from bindery.builder.sandbox import DEFAULT_USER, Sandbox, join_registry_cgroup

# How many trailing output lines an error carries: enough to show the failing step.
ERROR_TAIL_LINES = 20


class PodmanEngine(ContainerEngine):  # type: ignore[misc]
    """Builds and pushes images by running the podman CLI."""

    ca_bundle = Unicode(
        "",
        config=True,
        help="CA bundle handed to builds as the secret 'pipca' (TLS-intercepting proxies, "
        "private package indexes); empty for none. It never lands in an image layer.",
    )
    index_url = Unicode(
        "",
        config=True,
        help="Package index URL (PEP 503 simple API) handed to builds as the secret 'pipindex' "
        "(it may hold credentials, so it never lands in a layer); empty for the default.",
    )
    push_tls_verify = Bool(
        False,
        config=True,
        help="Verify the registry's TLS certificate on push. Off by default because the local "
        "registry speaks plain HTTP on loopback.",
    )
    push_compression = Enum(
        ("zstd", "gzip"),
        "zstd",
        config=True,
        help="How pushed layers are compressed (the builder's push_compression setting says why).",
    )
    sandbox_user = Unicode(
        DEFAULT_USER, config=True, help="The unprivileged host user podman runs as."
    )

    @property
    def sandbox(self) -> Sandbox:
        return Sandbox(self.sandbox_user)

    def build(
        self,
        *,
        push: bool = False,
        load: bool = False,
        buildargs: Mapping[str, str] | None = None,
        cache_from: list[str] | None = None,
        container_limits: Mapping[str, int] | None = None,
        tag: str = "",
        custom_context: bool = False,
        dockerfile: str = "",
        ignorefile: str = "",
        fileobj: IO[bytes] | None = None,
        path: str = "",
        labels: Mapping[str, str] | None = None,
        platform: str | None = None,
        volumes: Sequence[str] = (),
        **kwargs: Any,
    ) -> Iterator[str]:
        """Build ``tag`` from a context tarball (``fileobj``) or directory (``path``), leaving
        out what ``ignorefile`` (when given) lists.

        ``load`` needs nothing: podman builds straight into its local store. ``volumes``
        (``SRC:DST[:OPTIONS]``) are mounted into every RUN step and committed to no layer.
        ``container_limits`` are left to the build's cgroup (bindery.builder.cgroups): rootless
        podman ignores them here. A directory context and the Dockerfile are handed to the
        sandbox user where they are (the build process keeps its temporary files on the
        sandbox's disk).
        """
        sandbox = self.sandbox
        with tempfile.TemporaryDirectory(prefix="bindery-context-", dir=sandbox.tmp) as scratch:
            index_secret = Path(scratch, "pipindex")
            if fileobj is not None:
                context = Path(scratch, "context")
                context.mkdir()
                with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
                    tar.extractall(context, filter=_skip_unsafe_members)  # noqa: S202 -- filtered
            else:
                context = Path(path)
                sandbox.hand_over(context)

            cmd = ["build", "--layers", f"--tag={tag}"]
            if dockerfile:
                sandbox.hand_over(context / dockerfile)
                cmd.append(f"--file={context / dockerfile}")
            if ignorefile:
                # In place of the context's own .dockerignore/.containerignore, which podman
                # would otherwise apply as it finds them.
                sandbox.hand_over(Path(ignorefile))
                cmd.append(f"--ignorefile={ignorefile}")
            if self.ca_bundle:
                cmd.append(f"--secret=id=pipca,src={self.ca_bundle}")
            if self.index_url:
                index_secret.write_text(self.index_url)
                index_secret.chmod(0o600)
                cmd.append(f"--secret=id=pipindex,src={index_secret}")
            if platform:
                cmd.append(f"--platform={platform}")
            cmd += [f"--cache-from={image}" for image in cache_from or []]
            cmd += [f"--volume={volume}" for volume in volumes]
            cmd += [f"--build-arg={k}={v}" for k, v in (buildargs or {}).items()]
            cmd += [f"--label={k}={v}" for k, v in (labels or {}).items()]
            cmd.append(str(context))
            sandbox.hand_over(Path(scratch))
            yield from _stream(sandbox.podman(*cmd), BuildError, f"Building {tag} failed")

        if push:
            yield from self.push(tag)

    def push(self, image: str) -> Iterator[str]:
        """Push ``image`` to the registry its name points at."""
        cmd = self.sandbox.podman(
            "push",
            f"--tls-verify={str(self.push_tls_verify).lower()}",
            f"--compression-format={self.push_compression}",
            image,
        )
        yield from _stream(cmd, ImageLoadError, f"Pushing {image} failed", join_registry_cgroup)

    def pull(self, image: str) -> bool:
        """Pull ``image`` from its registry; False when it is not there (or unreachable)."""
        cmd = self.sandbox.podman(
            "pull", "--quiet", f"--tls-verify={str(self.push_tls_verify).lower()}", image
        )
        pulled = subprocess.run(
            cmd, capture_output=True, check=False, preexec_fn=join_registry_cgroup
        )
        return pulled.returncode == 0

    def has_image(self, image: str) -> bool:
        exists = subprocess.run(self.sandbox.podman("image", "exists", image), check=False)
        return exists.returncode == 0

    def pull_as(self, source: str, name: str, *, tls_verify: bool) -> Iterator[str]:
        """Pull ``source`` (a mirror's copy) and keep it as ``name`` alone, the name the
        Dockerfile's FROM resolves to in the store."""
        podman = self.sandbox.podman
        cmd = podman("pull", f"--tls-verify={str(tls_verify).lower()}", source)
        yield from _stream(cmd, MissingBaseImage, f"Pulling {source} failed", join_registry_cgroup)
        subprocess.run(podman("tag", source, name), check=True, capture_output=True)
        subprocess.run(podman("untag", source, source), check=True, capture_output=True)

    def inspect_image(self, image: str) -> Image | None:
        """The image's tags and config, or None when podman's local store lacks it."""
        podman = self.sandbox.podman
        exists = subprocess.run(podman("image", "exists", image), check=False)
        if exists.returncode == 1:
            return None
        found = subprocess.run(
            podman("image", "inspect", image), capture_output=True, text=True, check=True
        )
        info = json.loads(found.stdout)[0]
        return Image(tags=info.get("RepoTags") or [], config=info.get("Config") or {})


def _skip_unsafe_members(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """Extract what tarfile's 'data' filter allows, skipping the rest instead of failing.

    The context holds a stranger's repository: a symlink to /etc/passwd there must neither be
    followed on the host nor fail a build that repo2docker itself would run.
    """
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None


def _stream(
    cmd: list[str],
    error: type[Exception],
    summary: str,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[str]:
    """Yield the command's merged output line by line; raise ``error`` if it fails.

    The error message ends with the last lines of output, where the failing step shows.
    """
    tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        preexec_fn=preexec_fn,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            yield line
    if proc.returncode != 0:
        detail = "\n".join(tail)
        raise error(f"{summary} (exit status {proc.returncode}):\n{detail}")
