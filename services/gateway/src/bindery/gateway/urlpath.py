"""Where a ready session's browser goes: only ever a relative path inside the session.

A launch link carries `urlpath` (or BinderHub's `labpath`/`filepath`) chosen by whoever wrote the
link, and the browser goes there with the session's credentials: a path that leaves the session
(an absolute URL, `//host`, a backslash browsers treat as a slash, `javascript:`, `..` above the
session) would hand them to someone else. static/urlpath.js mirrors these functions for the
launch page; keep them in step (tests/unit/gateway covers the Python side).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

DEFAULT_URLPATH = "lab"
HANDOFF_PATH = ".bindery/handoff"
"""Under a session's prefix, `/user/<session>/.bindery/handoff`: Jupyter has no such route."""
MAX_URLPATH_LENGTH = 2048

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*:", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENCODE_SAFE = "-_.!~*'()"  # what JavaScript's encodeURIComponent leaves alone
_ENCODE_URI_SAFE = _ENCODE_SAFE + ";,/?:@&=+$#"  # and what its encodeURI leaves alone


def safe_urlpath(value: str | None) -> str | None:
    """The relative path to open inside the session, or None if `value` is unsafe or empty.

    One leading slash is accepted (`/lab/tree/x.ipynb`) and dropped, as BinderHub does.
    """
    if value is None or len(value) > MAX_URLPATH_LENGTH:
        return None
    if value.startswith("/"):
        value = value[1:]
    if not value.strip():
        return None
    # Check the value as given and as a browser may decode it (percent-encoded dots count as dots
    # in URL parsing), several times over so double encoding does not hide anything.
    forms = [value]
    for _ in range(3):
        decoded = unquote(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    for form in forms:
        if _CONTROL.search(form) or "\\" in form or form != form.strip():
            return None
        if form.startswith("/") or _SCHEME.match(form):
            return None
        segments = form.split("?", 1)[0].split("#", 1)[0].split("/")
        if any(segment.strip() in ("..", ".") for segment in segments):
            return None
    if "#" in value:
        return None
    return value


def requested_urlpath(query: Mapping[str, str]) -> str:
    """The urlpath a launch link asks for, made safe, as BinderHub's LaunchSpec reads it today:
    `labpath` opens `doc/tree/<path>` (JupyterLab showing that one document), else `filepath`
    opens `tree/<path>` (Notebook 7 opens a notebook there, as on mybinder.org), else `urlpath`.
    The two legacy parameters count when present at all and win over `urlpath`."""
    for name, prefix in (("labpath", "doc/tree/"), ("filepath", "tree/")):
        if name in query:
            path = query[name].lstrip("/")
            # BinderHub drops one trailing slash and encodes the path as encodeURI does.
            path = path[:-1] if path.endswith("/") else path
            return safe_urlpath(prefix + quote(path, safe=_ENCODE_URI_SAFE)) or DEFAULT_URLPATH
    return safe_urlpath(query.get("urlpath") or None) or DEFAULT_URLPATH


def handoff_target(session_url: str, urlpath: str | None, code: str) -> str:
    """Where the launch page sends the browser: the session's handoff address (on the session's
    own origin in subdomain mode), which trades the one-time `code` for the session's cookie and
    goes on to `urlpath` inside the session (sessionauth.py)."""
    base = session_url if session_url.endswith("/") else session_url + "/"
    path = safe_urlpath(urlpath) or DEFAULT_URLPATH
    return f"{base}{HANDOFF_PATH}?code={encode_component(code)}&next={encode_component(path)}"


def encode_component(value: str) -> str:
    """JavaScript's encodeURIComponent."""
    return quote(value, safe=_ENCODE_SAFE)


def launch_link(
    repo: str,
    ref: str = "",
    path: str = "",
    kind: str = "file",
    *,
    provider: str = "git",
    encode_repo: bool = True,
    ref_enabled: bool = True,
) -> str:
    """The `/v2/<provider>/<spec>` link of the home page form. `repo` is the provider's
    repository part (a URL for git, `owner/name` for gh), percent-encoded when the provider
    wants it; `kind` is `file` (opened in JupyterLab) or `url` (a URL path inside the session)."""
    repo = repo.strip()
    spec = encode_component(repo) if encode_repo else repo
    if ref_enabled:
        spec += "/" + encode_component(ref.strip() or "HEAD")
    link = f"/v2/{provider}/{spec}"
    path = path.strip()
    if path:
        urlpath = path if kind == "url" else "lab/tree/" + path.lstrip("/")
        link += "?urlpath=" + encode_component(urlpath)
    return link
