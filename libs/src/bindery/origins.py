"""Which other web origins may embed Bindery: start launches and talk to sessions' Jupyter.

In: the `BINDERY_ALLOWED_ORIGINS` setting (`*`, a comma-separated list of origins such as
`https://thebe.example.org`, or empty for none). Out: whether a request's `Origin` may start a
launch or read its progress (the gateway, for `/build`'s event stream and websocket), the
`Access-Control-Allow-Origin` value to answer with, and the Jupyter options that apply the same
rule inside every session (`ServerApp.allow_origin` / `allow_origin_pat`), so a page allowed to
launch can also run code, and a page that is not gets neither.

BinderHub's equivalent is `cors_allow_origin` on the hub plus `allow_origin` on the sessions;
mybinder.org sets both to `*` (Thebe and Jupyter Book's live code embed it from any site).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

ANY = "*"


class InvalidOrigins(ValueError):
    pass


def normalise_origin(value: str) -> str:
    """`scheme://host[:port]`, lower-cased, without a path; raises InvalidOrigins otherwise."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidOrigins(f"{value!r} is not an origin (scheme://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise InvalidOrigins(f"{value!r} is not an origin: it has more than scheme, host, port")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname.lower()}{port}"


@dataclass(frozen=True)
class AllowedOrigins:
    """Origins other than Bindery's own that may embed it: everyone, a list, or nobody."""

    everyone: bool
    origins: frozenset[str]

    @classmethod
    def parse(cls, value: str) -> AllowedOrigins:
        items = [item.strip() for item in value.split(",") if item.strip()]
        if ANY in items:
            if len(items) > 1:
                raise InvalidOrigins("`*` allows every origin: list no others beside it")
            return cls(everyone=True, origins=frozenset())
        return cls(everyone=False, origins=frozenset(normalise_origin(i) for i in items))

    def allows(self, origin: str) -> bool:
        if self.everyone:
            return True
        try:
            return normalise_origin(origin) in self.origins
        except InvalidOrigins:  # "null" (sandboxed frames, file://) and garbage
            return False

    def allow_origin_header(self, origin: str) -> str | None:
        """`Access-Control-Allow-Origin` for a request from `origin` (None: send none)."""
        if self.everyone:
            return ANY
        return origin if self.allows(origin) else None

    def jupyter_options(self) -> list[str]:
        """Jupyter Server options applying the same rule to a session's own API and websockets.
        Without any, Jupyter accepts only requests from its own origin (and without an Origin)."""
        if self.everyone:
            return [f"--ServerApp.allow_origin={ANY}"]
        if not self.origins:
            return []
        pattern = "|".join(re.escape(origin) for origin in sorted(self.origins))
        return [f"--ServerApp.allow_origin_pat=^({pattern})$"]


NOBODY = AllowedOrigins(everyone=False, origins=frozenset())
