"""The pages people see: the home page form and the launch page that follows a launch.

The HTML is static (no templating of user input into it): the launch page's script reads the
provider/spec from its own address. Scripts come only from this origin (no CDN: the network is
closed, and a Content-Security-Policy forbids anything else).
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from aiohttp import web

from bindery.gateway.specs import InvalidSpec, parse_raw_spec
from bindery.gateway.urlpath import launch_link

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def page(body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
    )


def error_page(title: str, message: str, status: int) -> web.Response:
    body = (
        template("error.html")
        .replace("{{title}}", html.escape(title))
        .replace("{{message}}", html.escape(message))
    )
    return page(body, status)


async def home(_request: web.Request) -> web.Response:
    return page(template("home.html"))


def redirect(location: str, status: int = 303) -> web.Response:
    """A redirect to exactly `location` (aiohttp's HTTPFound would re-quote it)."""
    return web.Response(status=status, headers={"Location": location})


async def launch_form(request: web.Request) -> web.Response:
    """The home page form without JavaScript: GET /launch?repo=...&ref=...&path=...&kind=..."""
    repo = request.query.get("repo", "").strip()
    if not repo:
        return error_page("Nothing to launch", "Enter a repository URL to launch.", 400)
    link = launch_link(
        repo,
        request.query.get("ref", ""),
        request.query.get("path", ""),
        request.query.get("kind", "file"),
    )
    return redirect(link)


async def launch_page(request: web.Request) -> web.Response:
    try:
        parse_raw_spec(request.raw_path, "/v2/")
    except InvalidSpec as exc:
        return error_page("This launch link is not valid", str(exc), 400)
    return page(template("launch.html"))
