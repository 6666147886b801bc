"""`GET /api/repoproviders`: the providers this Bindery launches, as BinderHub lists them.

Out: a JSON list of BinderHub's `display_config` entries (id, displayName, repo label and
placeholder, whether a ref applies, the spec's validation regex, detection regexes for pasted
URLs), taken from the shared catalogue, so a launch form can auto-detect the provider.
"""

from __future__ import annotations

from aiohttp import web

from bindery.providers import PROVIDERS

_BODY = [provider.display_config() for provider in PROVIDERS.values()]


async def repoproviders(_request: web.Request) -> web.Response:
    return web.json_response(_BODY, headers={"Cache-Control": "public, max-age=300"})
