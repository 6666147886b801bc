"""Operator policy on specs: bans, an allow-list, higher quotas and per-repository settings.

In: provider and raw spec. Out: `ResolveError(BANNED)` for a refused spec, and the
`RepoConfig` that travels in ref-resolved (the repository's `quota`, which the scheduler's
admission enforces). Patterns are case-insensitive
regexes matched from the start of `<provider>/<spec>` with the spec percent-decoded, so neither
`DS-100/Textbook` nor `%44S-100/textbook` slips past a ban written for `ds-100/textbook`
(BinderHub matches case-insensitively for the same reason).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from bindery.events import FailureReason, RepoConfig
from bindery.resolver.errors import ResolveError
from bindery.resolver.settings import ResolverSettings


def _compile(patterns: list[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


@dataclass(frozen=True)
class SpecPolicy:
    banned: tuple[re.Pattern[str], ...]
    allowed: tuple[re.Pattern[str], ...]
    high_quota: tuple[re.Pattern[str], ...]
    spec_config: tuple[tuple[re.Pattern[str], RepoConfig], ...]
    quota: int | None
    quota_higher: int | None

    @classmethod
    def from_settings(cls, settings: ResolverSettings) -> SpecPolicy:
        """Compiles every pattern at start, so a typo stops the service instead of a launch."""
        return cls(
            banned=_compile(settings.banned_specs),
            allowed=_compile(settings.allowed_specs),
            high_quota=_compile(settings.high_quota_specs),
            spec_config=tuple(
                (re.compile(item.pattern, re.IGNORECASE), item.config)
                for item in settings.spec_config
            ),
            quota=settings.per_repo_quota,
            quota_higher=settings.per_repo_quota_higher,
        )

    @staticmethod
    def subject(provider: str, raw_spec: str) -> str:
        return f"{provider}/{unquote(raw_spec)}"

    def check_allowed(self, provider: str, raw_spec: str) -> None:
        subject = self.subject(provider, raw_spec)
        if any(p.match(subject) for p in self.banned) or (
            self.allowed and not any(p.match(subject) for p in self.allowed)
        ):
            raise ResolveError(
                "This repository is banned on this Bindery: launches of it are refused. "
                "If you think this is a mistake, contact the operator.",
                FailureReason.BANNED,
            )

    def repo_config(self, provider: str, raw_spec: str) -> RepoConfig:
        subject = self.subject(provider, raw_spec)
        higher = any(p.match(subject) for p in self.high_quota)
        settings: dict[str, Any] = {"quota": self.quota_higher if higher else self.quota}
        for pattern, config in self.spec_config:
            if pattern.match(subject):
                settings.update(config.model_dump(exclude_unset=True))
        return RepoConfig(**settings)
