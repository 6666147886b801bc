"""The pages people see: the home page form, the launch page that follows a launch, badges, and
BinderHub's legacy `/repo/...` links (redirects to launch pages).

The HTML is static (no templating of user input into it): the launch page's script reads the
provider/spec from its own address. Scripts come only from this origin (no CDN: the network is
closed, and a Content-Security-Policy forbids anything else); xterm.js is vendored under
static/vendor/ (see services/gateway/vendor-web.mjs).
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from urllib.parse import parse_qs, unquote

from aiohttp import web

from bindery.gateway.specs import InvalidSpec, parse_raw_spec
from bindery.gateway.urlpath import encode_component, launch_link
from bindery.providers import PROVIDERS, detect

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
# xterm.js adds <style> elements for its theme and cell sizes: the launch page allows inline
# styles (no user input is ever templated into a page, so they cannot carry an injection).
LAUNCH_PAGE_HEADERS = {
    **PAGE_HEADERS,
    "Content-Security-Policy": PAGE_HEADERS["Content-Security-Policy"].replace(
        "style-src 'self'", "style-src 'self' 'unsafe-inline'"
    ),
}
IMAGE_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}


@cache
def template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def page(body: str, status: int = 200, headers: dict[str, str] = PAGE_HEADERS) -> web.Response:
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=headers
    )


def error_page(
    title: str, message: str, status: int, action: str = "", home: str = ""
) -> web.Response:
    """A page saying what went wrong; `action` is HTML the caller built (escaped) for what the
    person can do next, e.g. a relaunch button. `home` is the gateway's URL for a page served
    on another origin (a session's), empty on the gateway's own."""
    body = (
        template("error.html")
        .replace("{{home}}", html.escape(home))
        .replace("{{title}}", html.escape(title))
        .replace("{{message}}", html.escape(message))
        .replace("{{action}}", action)
    )
    return page(body, status)


async def home(_request: web.Request) -> web.Response:
    return page(template("home.html"))


def redirect(location: str, status: int = 303) -> web.Response:
    """A redirect to exactly `location` (aiohttp's HTTPFound would re-quote it)."""
    return web.Response(status=status, headers={"Location": location})


def form_link(repo: str, ref: str, path: str, kind: str, provider: str = "") -> str:
    """The launch link for the home page's fields, detecting the provider as home.js does: a URL
    a provider recognises (github.com, gitlab.com, DOIs...) goes to it, anything else is a git
    repository URL. A ref typed into the form wins over one found in the URL."""
    entry = PROVIDERS.get(provider)
    if entry is None:
        detected = detect(repo)
        if detected is not None and detected[0] != "git":
            found, spec = detected
            entry = PROVIDERS[found]
            if entry.ref_enabled and ref.strip() and ref.strip() != "HEAD":
                spec = spec.rsplit("/", 1)[0] + "/" + encode_component(ref.strip())
            link = f"/v2/{found}/{spec}"
            return launch_link_path(link, path, kind)
    if entry is None:
        entry = PROVIDERS["git"]
    return launch_link(
        repo,
        ref,
        path,
        kind,
        provider=entry.id,
        encode_repo=entry.url_encode,
        ref_enabled=entry.ref_enabled,
    )


def launch_link_path(link: str, path: str, kind: str) -> str:
    """`link` with the form's path added as its urlpath."""
    with_path = launch_link("x", "", path, kind)
    query = with_path.partition("?")[2]
    return f"{link}?{query}" if query else link


async def launch_form(request: web.Request) -> web.Response:
    """The home page form without JavaScript: GET /launch?repo=...&ref=...&path=...&kind=..."""
    repo = request.query.get("repo", "").strip()
    if not repo:
        return error_page("Nothing to launch", "Enter a repository URL to launch.", 400)
    link = form_link(
        repo,
        request.query.get("ref", ""),
        request.query.get("path", ""),
        request.query.get("kind", "file"),
        request.query.get("provider", ""),
    )
    return redirect(link)


def legacy_repo_link(org: str, repo: str, rest: str, query: str) -> str:
    """Where BinderHub's legacy `/repo/<org>/<repo>[/<path>]` goes: the GitHub repository's
    launch page, with `<path>` (if any) as its urlpath and the link's own query kept.

    BinderHub sends these to the `master` branch (their default when the form was current) and
    then falls back to HEAD when there is none; HEAD, the default branch, is what they meant.
    The path parts arrive percent-encoded and stay so."""
    link = f"/v2/gh/{org}/{repo}/HEAD"
    params = [query] if query else []
    if rest.strip("/") and "urlpath" not in parse_qs(query, keep_blank_values=True):
        params.append("urlpath=" + encode_component(unquote(rest.strip("/"))))
    return f"{link}?{'&'.join(params)}" if params else link


async def legacy_repo(request: web.Request) -> web.Response:
    """GET /repo/<org>/<repo>[/<path>]: BinderHub's legacy link form."""
    org, _, tail = request.raw_path.partition("?")[0].removeprefix("/repo/").partition("/")
    repo, _, rest = tail.partition("/")
    if not org or not repo:
        return error_page("This launch link is not valid", "Use /repo/<org>/<repository>.", 400)
    return redirect(legacy_repo_link(org, repo, rest, request.query_string), status=302)


async def launch_page(request: web.Request) -> web.Response:
    try:
        parse_raw_spec(request.raw_path, "/v2/")
    except InvalidSpec as exc:
        return error_page("This launch link is not valid", str(exc), 400)
    return page(template("launch.html"), headers=LAUNCH_PAGE_HEADERS)


@cache
def _static_bytes(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def svg(name: str) -> web.Response:
    return web.Response(
        body=_static_bytes(name), content_type="image/svg+xml", headers=IMAGE_HEADERS
    )


async def badge(_request: web.Request) -> web.Response:
    return svg("badge.svg")


async def badge_logo(_request: web.Request) -> web.Response:
    return svg("badge_logo.svg")


async def favicon(_request: web.Request) -> web.Response:
    return svg("favicon.svg")
