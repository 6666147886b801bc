"""A session's own account of its activity, asked of its Jupyter Server's REST API.

In: a session's name and target (its Jupyter's base URL, from pod-ready or the runtime) and
the session secret, from which its token follows (bindery.tokens). Out: the session's last
activity (now, if one of its kernels is busy; None if it has no kernel or terminal), or
`NoAnswer`.

What Jupyter Server 2 reports, and why it is read the way it is:
- `GET api/kernels`: per kernel `execution_state` and `last_activity`. The server updates a
  kernel's last activity on its IOPub messages that belong to tracked requests (execution,
  completion, comm messages, their outputs); kernel_info, comm_info, interrupt, shutdown and
  debug requests and bare status messages are `untracked_message_types`, so a tab reconnecting
  its websocket does not count. `busy` means code is running now.
- `GET api/terminals`: per terminal `last_activity` (keystrokes in, output out). 404 when the
  server has terminals disabled: no terminals.
- Not `api/status`: its `last_activity` includes every API request, and JupyterLab polls
  api/kernels, api/sessions, api/terminals and api/contents every 10 s while a tab is open.
- Every request carries `no_track_activity=1`, which jupyter_server's `APIHandler` honours
  (`update_api_activity`), so the culler's own requests never count as activity inside the
  session either (Jupyter's `shutdown_no_activity_timeout` and kernel culling read it).

Answers are bounded in size and time: the server runs the repository's code and may answer
anything, slowly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bindery.culler.cull import NoAnswer
from bindery.tokens import session_token

# A kernel's entry is about 200 bytes: room for thousands of kernels.
MAX_ANSWER_BYTES = 1 << 20
_NOT_TRACKED = {"no_track_activity": "1"}


class JupyterActivity:
    """Asks sessions' Jupyter servers when they were last active (`AskSession`)."""

    def __init__(self, http: aiohttp.ClientSession, secret: str, timeout: float) -> None:
        self._http = http
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def __call__(self, session: str, target: str) -> datetime | None:
        base = f"{target.rstrip('/')}/user/{session}/api/"
        headers = {"Authorization": f"token {session_token(self._secret, session)}"}
        kernels = await self._get(base + "kernels", headers, missing_is_empty=False)
        if any(kernel.get("execution_state") == "busy" for kernel in kernels):
            return datetime.now(UTC)
        terminals = await self._get(base + "terminals", headers, missing_is_empty=True)
        times = [_time(item) for item in (*kernels, *terminals)]
        return max(times, default=None)

    async def _get(
        self, url: str, headers: dict[str, str], *, missing_is_empty: bool
    ) -> list[dict[str, Any]]:
        try:
            async with self._http.get(
                url, params=_NOT_TRACKED, headers=headers, timeout=self._timeout
            ) as resp:
                if resp.status == 404 and missing_is_empty:
                    return []
                if resp.status != 200:
                    raise NoAnswer(f"{resp.url.path} answered {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_any():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise NoAnswer(f"answer over {MAX_ANSWER_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NoAnswer(f"{type(exc).__name__}: {exc}") from exc
        try:
            items = json.loads(body)
        except ValueError as exc:
            raise NoAnswer(f"answer is not JSON: {exc}") from exc
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise NoAnswer("answer is not a list of objects")
        return items


def _time(item: dict[str, Any]) -> datetime:
    value = item.get("last_activity")
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise NoAnswer(f"last_activity {value!r} is not a time with its zone")
    return when
