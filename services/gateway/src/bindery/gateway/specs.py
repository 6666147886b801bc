"""Provider and spec from a raw request path, as BinderHub's `/build/<provider>/<spec>` has them.

The spec stays percent-encoded: the git provider's spec is `<url-escaped repository URL>/<ref>`,
and decoding it (as aiohttp's match_info does) would merge the URL's slashes with the separator.
Provider names and spec shapes come from the shared catalogue (`bindery.providers`); the
resolver does the full checks, this only turns away what can never be valid.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from bindery.events import MAX_SPEC_LENGTH
from bindery.providers import PROVIDERS, spec_syntax_error

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidSpec(ValueError):
    """The path cannot name a launch; the message is safe and meant for the person who sent it."""


def parse_raw_spec(raw_path: str, prefix: str) -> tuple[str, str]:
    """`/build/git/https%3A%2F%2Fexample.org%2Fr.git/HEAD?x=1` -> ("git", "https%3A...git/HEAD")."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith(prefix):
        raise InvalidSpec(f"the path must start with {prefix}")
    provider, _, spec = path[len(prefix) :].partition("/")
    if not provider:
        raise InvalidSpec("no provider given: use /<provider>/<spec>, e.g. /git/<url>/<ref>")
    if provider not in PROVIDERS:
        known = ", ".join(sorted(PROVIDERS))
        shown = provider if len(provider) <= 32 and not _CONTROL.search(provider) else "that"
        raise InvalidSpec(f"unknown provider {shown!r}: known providers are {known}")
    if not spec.strip("/"):
        raise InvalidSpec("the spec is empty: give the repository and the ref, e.g. <url>/<ref>")
    if len(spec) > MAX_SPEC_LENGTH:
        raise InvalidSpec(f"the spec is longer than {MAX_SPEC_LENGTH} characters")
    try:
        decoded = unquote(spec, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidSpec("the spec is not valid UTF-8 once percent-decoded") from exc
    if _CONTROL.search(spec) or _CONTROL.search(decoded):
        raise InvalidSpec("the spec contains control characters")
    problem = spec_syntax_error(provider, spec)
    if problem is not None:
        raise InvalidSpec(problem)
    return provider, spec
