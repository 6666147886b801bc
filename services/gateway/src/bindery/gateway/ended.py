"""What the address of a session that is not running says, to a person and to a program.

In: the session's name and, when this replica saw it stop, why (the reason of its pod-stopped,
how long it had been idle) and the repository and ref it ran. Out: a 404 that says what happened:
an HTML page with a button that launches the same repository at the same ref again for browsers,
JSON with the same facts (`message`, `stopped`, `relaunch`) for API clients.

The relaunch link goes through the home page's form route (`/launch?repo=...&ref=...`), which
finds the provider from the repository URL the way the home page does, so the link needs no
provider or spec of its own and works for sessions whose routes were rebuilt after a restart.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from bindery.events import StopReason
from bindery.gateway.pages import error_page


@dataclass(frozen=True)
class Ended:
    """Why a session ended and how to get another like it."""

    reason: StopReason
    relaunch: str = ""
    """The gateway's path that launches the same repository and ref; empty: unknown."""
    idle_seconds: float | None = None
    """For `idle`: how long the session had been idle when it was culled."""


def relaunch_link(repo_url: str, resolved_ref: str = "") -> str:
    """The path that launches `repo_url` at `resolved_ref` again (empty without a repository)."""
    if not repo_url:
        return ""
    query = {"repo": repo_url, **({"ref": resolved_ref} if resolved_ref else {})}
    return "/launch?" + urlencode(query)


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute" + ("" if minutes == 1 else "s")


def because(ended: Ended) -> str:
    """The end of the sentence "The session was stopped because ..."."""
    if ended.reason is StopReason.IDLE and ended.idle_seconds:
        return f"nobody used it for {_minutes(ended.idle_seconds)}"
    return STOPPED_BECAUSE[ended.reason]


# Why a session stopped, by the reason of its pod-stopped, as the end of a sentence.
STOPPED_BECAUSE = {
    StopReason.IDLE: "nobody used it for a while",
    StopReason.MAX_AGE: "it reached the longest time a session may run",
    StopReason.DISK: "it wrote more to its disk than a session may",
    StopReason.ORPHANED: "its launch was gone",
    StopReason.FAILED: "its server stopped",
    StopReason.SHUT_DOWN: "its Jupyter server was shut down from inside the session",
    StopReason.CRASHED: "its Jupyter server stopped unexpectedly",
    StopReason.OOM: "its Jupyter server ran out of memory",
    StopReason.ABANDONED: "everyone left its launch before it was ready",
    StopReason.NODE_LOST: "the machine it ran on stopped answering",
}


def message(session: str, ended: Ended | None) -> str:
    if ended is None:
        return f"No running session named {session!r}: it may have stopped or never existed."
    return (
        f"The session {session!r} was stopped because {because(ended)}. "
        "Nothing in it was kept: launch the repository again for a new session."
    )


def wants_page(request: web.Request) -> bool:
    """A browser navigating (it asks for HTML first), not a script or an API client."""
    accept = request.headers.get("Accept", "")
    return request.method == "GET" and accept.split(",", 1)[0].strip() == "text/html"


def not_running(
    request: web.Request, session: str, ended: Ended | None, home: str = ""
) -> web.Response:
    """The 404 for `/user/<session>/...` when no route exists; `home` is the gateway's URL when
    this answers on the session's own origin (subdomain mode), so its links lead back."""
    text = message(session, ended)
    relaunch = home + ended.relaunch if ended and ended.relaunch else ""
    if not wants_page(request):
        return web.json_response(
            {
                "message": text,
                "stopped": ended.reason if ended else None,
                "relaunch": relaunch or None,
            },
            status=404,
        )
    title = "This session has ended" if ended else "No session here"
    action = (
        f'<p><a class="button" id="relaunch" href="{html.escape(relaunch)}">Launch it again</a></p>'
        if relaunch
        else ""
    )
    return error_page(title, text, 404, action, home)
