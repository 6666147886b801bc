"""Resolver settings (`BINDERY_*` environment variables)."""

from __future__ import annotations

from bindery.settings import CommonSettings


class ResolverSettings(CommonSettings):
    health_port: int = 8591

    image_prefix: str = "bindery/"
    """Images land in `<registry>/<image_prefix><repo slug>:<commit>`."""

    git_timeout: float = 30.0
    """A git server that does not answer `ls-remote` within this is reported unreachable, so a
    launch never hangs on a dead host."""

    max_spec_length: int = 4096
    max_ref_length: int = 255
