"""`GET /versions` and `GET /api/openapi.json`: what runs here and how to talk to it.

In: installed package metadata; openapi.json beside this module (hand-written: it documents the
event stream's payloads, which no framework derives). Out: JSON.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from aiohttp import web

from bindery.gateway.keys import GATEWAY

OPENAPI = Path(__file__).with_name("openapi.json")
PACKAGES = (
    "bindery-gateway",
    "bindery-libs",
    "jupyter-repo2docker",
    "aiohttp",
    "aio-pika",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@cache
def versions_document() -> dict[str, Any]:
    """BinderHub's shape (`binderhub`, `builder_info`) so existing dashboards read it, plus
    Bindery's packages. repo2docker is reported when installed beside the gateway."""
    gateway = _version("bindery-gateway") or "unknown"
    packages = {name: v for name in PACKAGES if (v := _version(name)) is not None}
    builder_info = {}
    if "jupyter-repo2docker" in packages:
        builder_info["repo2docker-version"] = packages["jupyter-repo2docker"]
    return {
        "binderhub": f"bindery {gateway}",
        "bindery": gateway,
        "builder_info": builder_info,
        "packages": packages,
    }


async def versions(_request: web.Request) -> web.Response:
    return web.json_response(versions_document())


@cache
def _openapi_template() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OPENAPI.read_text(encoding="utf-8"))
    return document


async def openapi(request: web.Request) -> web.Response:
    document = dict(_openapi_template())
    document["info"] = {**document["info"], "version": versions_document()["bindery"]}
    document["servers"] = [{"url": request.app[GATEWAY].settings.public_url}]
    return web.json_response(document)
