"""Typed keys of what the aiohttp application holds."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from bindery.gateway.deps import Gateway
from bindery.gateway.proxy import Proxy

GATEWAY = web.AppKey("gateway", Gateway)
CLIENT = web.AppKey("client", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", Proxy)
