"""Run code in a session's Jupyter kernel over the kernel websocket, as JupyterLab does.

In: a session's URL and token and the code to run; out: what the code printed (stdout, stderr,
tracebacks) and how the run ended. Shared by the integration and e2e tests.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import aiohttp


@dataclass
class Outcome:
    output: str
    ended: str
    """idle (the code finished), or restarting/dead (the kernel died under it)."""


async def start_kernel(
    http: aiohttp.ClientSession, url: str, token: str, name: str | None = None
) -> str:
    """A new kernel of kernelspec ``name`` (the server's default: python3); its id."""
    headers = {"Authorization": f"token {token}"}
    body = {"name": name} if name else {}
    async with http.post(f"{url}api/kernels", headers=headers, json=body) as resp:
        assert resp.status == 201, await resp.text()
        kernel: dict[str, str] = await resp.json()
    return kernel["id"]


async def run_code(
    http: aiohttp.ClientSession, url: str, token: str, code: str, kernel: str | None = None
) -> Outcome:
    """Execute `code` (in a new kernel unless `kernel` is given) until idle or the kernel dies."""
    kernel = kernel or await start_kernel(http, url, token)
    headers = {"Authorization": f"token {token}"}
    ws_url = url.replace("http://", "ws://") + f"api/kernels/{kernel}/channels"
    async with http.ws_connect(ws_url, headers=headers) as ws:
        return await execute(ws, code)


async def execute(ws: aiohttp.ClientWebSocketResponse, code: str) -> Outcome:
    """Send one execute request on an open kernel websocket; read until the kernel is idle
    again (or dies, or the websocket closes)."""
    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "test",
            "session": uuid.uuid4().hex,
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
        "channel": "shell",
    }
    output: list[str] = []
    await ws.send_str(json.dumps(request))
    async for message in ws:
        data = json.loads(message.data)
        state = data.get("content", {}).get("execution_state")
        if data["msg_type"] == "status" and state in {"restarting", "dead"}:
            return Outcome("".join(output), state)
        if data.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if data["msg_type"] == "stream":
            output.append(data["content"]["text"])
        elif data["msg_type"] == "error":
            output.append("\n".join(data["content"]["traceback"]))
        elif data["msg_type"] == "status" and state == "idle":
            return Outcome("".join(output), "idle")
    return Outcome("".join(output), "closed")
