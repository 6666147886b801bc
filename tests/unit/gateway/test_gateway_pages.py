"""Home page links and badges, /versions, /metrics and the OpenAPI description."""

from __future__ import annotations

import re

import aiohttp
import pytest

from bindery.events import QueueLimit
from bindery.gateway.pages import form_link
from tests.unit.gateway.fakes import Harness


@pytest.mark.parametrize(
    "repo, ref, path, kind, provider, link",
    [
        ("https://github.com/owner/repo", "", "", "file", "", "/v2/gh/owner/repo/HEAD"),
        (
            "https://github.com/owner/repo/tree/dev",
            "",
            "a.ipynb",
            "file",
            "",
            "/v2/gh/owner/repo/dev?urlpath=lab%2Ftree%2Fa.ipynb",
        ),
        ("https://github.com/owner/repo.git", "v1.0", "", "file", "", "/v2/gh/owner/repo/v1.0"),
        ("https://gitlab.com/group/project", "", "", "file", "", "/v2/gl/group%2Fproject/HEAD"),
        ("10.5281/zenodo.3242074", "", "", "file", "", "/v2/zenodo/10.5281/zenodo.3242074"),
        (
            "https://example.org/r.git",
            "main",
            "lab",
            "url",
            "",
            "/v2/git/https%3A%2F%2Fexample.org%2Fr.git/main?urlpath=lab",
        ),
        ("file:///srv/repo", "", "", "file", "", "/v2/git/file%3A%2F%2F%2Fsrv%2Frepo/HEAD"),
        ("owner/repo", "main", "", "file", "gh", "/v2/gh/owner/repo/main"),
    ],
)
def test_form_link_detects_the_provider(
    repo: str, ref: str, path: str, kind: str, provider: str, link: str
) -> None:
    assert form_link(repo, ref, path, kind, provider) == link


async def test_no_javascript_form_redirects_to_the_detected_provider(harness: Harness) -> None:
    resp = await harness.client.get(
        "/launch", params={"repo": "https://github.com/o/r"}, allow_redirects=False
    )
    assert (resp.status, resp.headers["Location"]) == (303, "/v2/gh/o/r/HEAD")


@pytest.mark.parametrize(
    "path, location",
    [
        ("/repo/o/r", "/v2/gh/o/r/HEAD"),
        ("/repo/o/r/", "/v2/gh/o/r/HEAD"),
        ("/repo/o/r/notebooks/a%20b.ipynb", "/v2/gh/o/r/HEAD?urlpath=notebooks%2Fa%20b.ipynb"),
        ("/repo/o/r?filepath=x.ipynb", "/v2/gh/o/r/HEAD?filepath=x.ipynb"),
        ("/repo/o/r/lab?urlpath=tree", "/v2/gh/o/r/HEAD?urlpath=tree"),
    ],
)
async def test_legacy_repo_links_redirect_to_the_github_launch_page(
    harness: Harness, path: str, location: str
) -> None:
    resp = await harness.client.get(path, allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, location)


async def test_a_legacy_repo_link_without_a_repository_is_refused(harness: Harness) -> None:
    assert (await harness.client.get("/repo/o", allow_redirects=False)).status == 400


async def test_home_page_has_the_form_badges_and_copy_buttons(harness: Harness) -> None:
    html = await (await harness.client.get("/")).text()
    for needle in (
        'id="repo"',
        'id="ref"',
        'id="path"',
        'name="kind"',
        'id="badge-md"',
        'id="badge-rst"',
        'data-copy="link"',
        'name="viewport"',
    ):
        assert needle in html
    assert "https://" not in re.sub(r'placeholder="[^"]*"', "", html), "no third-party resource"


@pytest.mark.parametrize("path", ["/badge.svg", "/badge_logo.svg", "/favicon.ico"])
async def test_badges_are_svg(harness: Harness, path: str) -> None:
    resp = await harness.client.get(path)
    assert resp.status == 200
    assert resp.content_type == "image/svg+xml"
    assert (await resp.text()).startswith("<svg")


async def test_launch_page_uses_the_vendored_terminal(harness: Harness) -> None:
    html = await (await harness.client.get("/v2/gh/o/r/HEAD")).text()
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        resp = await harness.client.get(src)
        assert resp.status == 200, src
    assert "/static/vendor/xterm/xterm.js" in html


async def test_versions(harness: Harness) -> None:
    body = await (await harness.client.get("/versions")).json()
    assert body["binderhub"].startswith("bindery ")
    assert body["packages"]["bindery-gateway"] == body["bindery"]
    assert "repo2docker-version" in body["builder_info"]


async def test_metrics_count_launches_and_requests(harness: Harness) -> None:
    await (
        await harness.client.get("/build/gh/o/r/HEAD", timeout=aiohttp.ClientTimeout(total=1))
    ).release()
    text = await (await harness.client.get("/metrics")).text()
    assert 'bindery_gateway_launches_requested_total{provider="gh"}' in text
    assert 'bindery_gateway_requests_total{family="build"' in text
    assert "bindery_gateway_routes " in text


async def test_openapi_describes_every_route(harness: Harness) -> None:
    document = await (await harness.client.get("/api/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    assert document["servers"] == [{"url": "http://gw.example:8585"}]
    described = set(document["paths"])
    for resource in harness.client.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter") or info.get("prefix", "")
        path = re.sub(r"\{tail[^}]*\}", "", path).rstrip("/")
        if path.startswith("/static") or path.startswith("/favicon"):
            continue
        assert any(d.startswith(path.split("{")[0].rstrip("/") or "/") for d in described), path
    schema = document["components"]["schemas"]["ProgressEvent"]["properties"]
    assert "failed" in schema["phase"]["enum"] and "ref_not_found" in schema["reason"]["enum"]
    assert schema["queue_limit"]["enum"] == list(QueueLimit)
