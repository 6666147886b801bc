"""Server-Sent Events framing, as BinderHub's /build stream and its clients expect it.

Every event has an id `<launch id>:<n>[:<resume secret>]`: a browser's EventSource sends it back
as `Last-Event-ID` when it reconnects, which resumes the same launch instead of starting another.
The resume secret is in the ids sent to the client that started the launch only
(sessionauth.py): with it, a reconnect gets the session's credentials again; without it, only
the progress.
"""

from __future__ import annotations

import json
import re
from typing import Any

KEEPALIVE = b": keepalive\n\n"
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",  # nginx in front must not buffer the stream
}

_EVENT_ID = re.compile(r"^([0-9a-f]{1,64}):([0-9]{1,12})(?::([0-9a-f]{32}))?$")


def event_id(launch_id: str, seq: int, resume: str = "") -> str:
    return f"{launch_id}:{seq}:{resume}" if resume else f"{launch_id}:{seq}"


def format_event(payload: dict[str, Any], event_id: str | None = None) -> bytes:
    """One `data:` event; JSON escapes newlines, so a payload is always a single data line."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}data: {data}\n\n".encode()


def parse_last_event_id(value: str | None) -> tuple[str, int, str] | None:
    """`<launch id>:<n>[:<resume>]` -> (launch id, n, resume or ""); None for anything else."""
    if not value:
        return None
    match = _EVENT_ID.match(value.strip())
    if match is None:
        return None
    return match.group(1), int(match.group(2)), match.group(3) or ""
