"""The redirect into a session (which carries its token) never leaves the session."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import parse_qsl, urljoin, urlsplit

import pytest

from bindery.gateway.urlpath import (
    DEFAULT_URLPATH,
    handoff_target,
    launch_link,
    requested_urlpath,
    safe_urlpath,
)

HOSTILE = [
    "https://evil.example/",
    "http://evil.example/lab",
    "//evil.example/lab",
    "/\\evil.example",
    "\\\\evil.example\\share",
    "lab\\..\\..\\other",
    "javascript:alert(document.cookie)",
    "JavaScript:alert(1)",
    "java\tscript:alert(1)",
    " javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "../other-session/lab",
    "lab/../../other-session/lab",
    "..",
    "./../x",
    "%2e%2e/other-session",
    "%2E%2E%2Fother-session",
    "%252e%252e/other-session",
    "lab/%2e%2e/%2e%2e/x",
    "/%2F%2Fevil.example",
    "%2F%2Fevil.example",
    "%5C%5Cevil.example",
    "lab\r\nSet-Cookie: x=1",
    "lab/tree/x.ipynb\x00",
    "https:evil.example",
    "mailto:someone@example.org",
    "lab#javascript:alert(1)",
    "a" * 3000,
]

SAFE = {
    "lab": "lab",
    "/lab": "lab",
    "lab/tree/index.ipynb": "lab/tree/index.ipynb",
    "/tree/notebooks/a b.ipynb": "tree/notebooks/a b.ipynb",
    "voila/render/app.ipynb": "voila/render/app.ipynb",
    "proxy/8050/": "proxy/8050/",
    "lab/tree/a..b.ipynb": "lab/tree/a..b.ipynb",
    "lab/tree/notes:1.md": "lab/tree/notes:1.md",
    "lab?reset": "lab?reset",
}


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_urlpaths_are_refused(value: str) -> None:
    assert safe_urlpath(value) is None


@pytest.mark.parametrize(("value", "expected"), SAFE.items())
def test_relative_urlpaths_are_kept(value: str, expected: str) -> None:
    assert safe_urlpath(value) == expected


@pytest.mark.parametrize("value", [None, "", "/", "   "])
def test_empty_urlpaths_mean_default(value: str | None) -> None:
    assert safe_urlpath(value) is None
    assert handoff_target("http://s.gw/user/s/", value, "c").endswith("?code=c&next=lab")


@pytest.mark.parametrize("value", HOSTILE)
def test_handoff_never_leaves_the_session(value: str) -> None:
    session_url = "http://sess-1.gw.example:8585/user/sess-1/"
    target = handoff_target(session_url, value, "code")
    resolved = urlsplit(urljoin(session_url, target))
    assert resolved.netloc == "sess-1.gw.example:8585"
    assert resolved.path == "/user/sess-1/.bindery/handoff"
    assert resolved.query == "code=code&next=lab"


def test_handoff_target_carries_the_code_and_where_to_go_encoded() -> None:
    assert handoff_target("http://gw/user/s", "lab/tree/x y.ipynb", "1.a.b") == (
        "http://gw/user/s/.bindery/handoff?code=1.a.b&next=lab%2Ftree%2Fx%20y.ipynb"
    )
    assert handoff_target("http://gw/user/s/", "lab?reset", "c").endswith("next=lab%3Freset")


REQUESTS = {
    "urlpath=tree/x": "tree/x",
    "labpath=/notebooks/x.ipynb": "doc/tree/notebooks/x.ipynb",
    "labpath=a b/": "doc/tree/a%20b",
    "filepath=x.ipynb": "tree/x.ipynb",
    "filepath=docs/%C3%A9 1.ipynb&urlpath=lab": "tree/docs/%C3%A9%201.ipynb",
    "labpath=a.ipynb&filepath=b.ipynb": "doc/tree/a.ipynb",
    "filepath=": "tree/",
    "urlpath=": DEFAULT_URLPATH,
    "urlpath=//evil.example": DEFAULT_URLPATH,
    "labpath=../../x": DEFAULT_URLPATH,
    "filepath=%2e%2e/x": DEFAULT_URLPATH,
    "filepath=x%23y": DEFAULT_URLPATH,
    "": DEFAULT_URLPATH,
}


@pytest.mark.parametrize(("query", "expected"), REQUESTS.items())
def test_requested_urlpath_reads_binderhubs_parameters(query: str, expected: str) -> None:
    """labpath and filepath mean what BinderHub's LaunchSpec makes of them, and win."""
    assert requested_urlpath(dict(parse_qsl(query, keep_blank_values=True))) == expected


def test_launch_link_matches_encode_uri_component() -> None:
    link = launch_link("https://example.org/a b/r.git", "", "docs/x.ipynb")
    assert link == (
        "/v2/git/https%3A%2F%2Fexample.org%2Fa%20b%2Fr.git/HEAD?urlpath=lab%2Ftree%2Fdocs%2Fx.ipynb"
    )
    assert launch_link("file:///srv/r", "main", "voila/render/a", kind="url") == (
        "/v2/git/file%3A%2F%2F%2Fsrv%2Fr/main?urlpath=voila%2Frender%2Fa"
    )


JS = Path(__file__).parents[3] / "services/gateway/src/bindery/gateway/static/urlpath.js"


def test_javascript_mirror_agrees() -> None:
    """static/urlpath.js must decide every value exactly as the Python sanitizer does."""
    values = [*HOSTILE, *SAFE, "", "/", "lab/tree/%E2%9C%93.ipynb"]
    script = (
        JS.read_text()
        + "\nconst values = JSON.parse(process.argv[1]);"
        + "\nconst U = globalThis.BinderyUrlpath;"
        + "\nconsole.log(JSON.stringify({"
        + "safe: values.map((v) => U.safeUrlpath(v)),"
        + "handoff: values.map((v) => U.handoffTarget("
        + "'http://s.gw.example/user/s/', v, '1.a.b', 'http://gw.example/v2/git/x/HEAD')),"
        + "link: U.launchLink('https://example.org/a b/r.git', '', 'docs/x.ipynb', 'file'),"
        + "requested: JSON.parse(process.argv[2]).map("
        + "(q) => U.requestedUrlpath(new URLSearchParams(q))),"
        + "}));"
    )
    out = subprocess.run(
        ["node", "-e", script, json.dumps(values), json.dumps(list(REQUESTS))],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["safe"] == [safe_urlpath(v) for v in values]
    expected = [handoff_target("http://s.gw.example/user/s/", v, "1.a.b") for v in values]
    assert result["handoff"] == expected
    assert result["link"] == launch_link("https://example.org/a b/r.git", "", "docs/x.ipynb")
    assert result["requested"] == list(REQUESTS.values())
