"""`bindery launch <repository URL or local path> [--ref REF] [--open]`.

In: a repository (URL, or a path on this machine, which a gateway in the `local` profile
accepts), the gateway's URL. Out: the launch's phases as a progress bar and its build log on
stderr, then the session's URL (with its token) as the one line on stdout, so scripts can take
it. A dropped stream resumes the same launch (Last-Event-ID), never starts a second one.
Exit status: 0 ready, 1 the launch failed, 2 the gateway could not be reached or refused the
request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

from bindery.providers import PROVIDERS, detect

DEFAULT_GATEWAY = "http://127.0.0.1:8585"
# Where each phase sits on the bar (the launch page uses the same scale).
PROGRESS = {
    "waiting": 3,
    "fetching": 15,
    "building": 35,
    "pushing": 60,
    "built": 70,
    "pulling": 75,
    "launching": 85,
    "ready": 100,
    "failed": 100,
}
RECONNECTS = 5


class LaunchError(Exception):
    """The gateway refused or could not be reached; the message says what to do."""


def build_path(target: str, ref: str | None = None, provider: str | None = None) -> str:
    """`/build/<provider>/<spec>` for a repository URL, a provider spec or a local path."""
    local = Path(target).expanduser()
    if provider is None and "://" not in target and local.exists():
        target = local.resolve().as_uri()
    entry = PROVIDERS.get(provider or "")
    if provider is not None and entry is None:
        raise LaunchError(f"unknown provider {provider!r}: known are {', '.join(PROVIDERS)}")
    if entry is None:
        detected = detect(target)
        if detected is not None:
            found, spec = detected
            if ref and PROVIDERS[found].ref_enabled:
                spec = spec.rsplit("/", 1)[0] + "/" + quote(ref, safe="")
            return f"/build/{found}/{spec}"
        entry = PROVIDERS["git"]
    spec = quote(target, safe="") if entry.url_encode else target
    if entry.ref_enabled:
        spec += "/" + quote(ref or "HEAD", safe="")
    return f"/build/{entry.id}/{spec}"


@dataclass
class Display:
    """The bar on one redrawn line when stderr is a terminal; plain lines otherwise."""

    stream: TextIO
    quiet: bool = False
    phase: str = "waiting"
    width: int = 30
    tty: bool = field(init=False)

    def __post_init__(self) -> None:
        self.tty = self.stream.isatty()

    def _bar(self) -> str:
        percent = PROGRESS.get(self.phase, 0)
        filled = self.width * percent // 100
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {percent:3d}% {self.phase}"

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")

    def event(self, payload: dict[str, Any]) -> None:
        phase = str(payload.get("phase", self.phase))
        message = str(payload.get("message", ""))
        changed = phase != self.phase
        self.phase = phase
        self._clear()
        if message and not self.quiet:
            self.stream.write(message if message.endswith("\n") else message + "\n")
        elif changed and not self.tty:
            self.stream.write(f"-- {phase}\n")
        if self.tty:
            self.stream.write(self._bar())
        self.stream.flush()

    def note(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        if self.tty:
            self.stream.write(self._bar())
        self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def follow(
    http: aiohttp.ClientSession, gateway: str, path: str, display: Display
) -> dict[str, Any]:
    """Read the launch's event stream to its end; returns the terminal event."""
    last_id: str | None = None
    attempts = 0
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            async with http.get(gateway + path, headers=headers) as response:
                if response.status != 200:
                    raise LaunchError(await refusal(response))
                async for raw in response.content:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith("id:"):
                        last_id = line[3:].strip()
                    elif line.startswith("data:"):
                        payload = json.loads(line[5:])
                        display.event(payload)
                        attempts = 0
                        if payload.get("phase") in ("ready", "failed"):
                            return dict(payload)
        except (aiohttp.ClientError, TimeoutError) as exc:  # refused, reset, cut mid-body
            if last_id is None:
                raise LaunchError(
                    f"cannot reach Bindery at {gateway} ({exc or type(exc).__name__}): is it "
                    "running (`make up`), and is --gateway right?"
                ) from exc
        attempts += 1
        if attempts > RECONNECTS:
            raise LaunchError("the connection to Bindery keeps dropping; try again later")
        display.note(f"Connection lost; resuming the same launch (attempt {attempts})...")
        await asyncio.sleep(min(10.0, 0.5 * 2**attempts))


async def refusal(response: aiohttp.ClientResponse) -> str:
    text = await response.text()
    try:
        message = str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        message = text[:500]
    return f"Bindery refused the launch ({response.status}): {message.strip()}"


def session_url(ready: dict[str, Any], urlpath: str) -> str:
    joiner = "&" if "?" in urlpath else "?"
    return f"{ready['url']}{urlpath.lstrip('/')}{joiner}token={quote(ready['token'], safe='')}"


async def launch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    display = Display(err, quiet=args.quiet)
    try:
        path = build_path(args.repository, args.ref, args.provider)
        if args.build_only:
            path += "?build_only=true"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            result = await follow(http, args.gateway.rstrip("/"), path, display)
    except LaunchError as exc:
        display.end()
        err.write(f"bindery: {exc}\n")
        return 2
    display.end()
    if result.get("phase") == "failed":
        reason = result.get("reason", "unknown")
        err.write(f"bindery: the launch failed ({reason}): {result.get('message', '').strip()}\n")
        return 1
    if "url" not in result:
        out.write(f"{result.get('imageName', '')}\n")
        return 0
    url = session_url(result, args.urlpath)
    out.write(url + "\n")
    out.flush()
    if args.open:
        webbrowser.open(url)
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(launch(args, sys.stdout, sys.stderr))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="launch a repository and print its session's URL",
        description="Launch a repository (URL or local path) and print the session's URL.",
    )
    parser.add_argument("repository", help="repository URL, provider spec, or local path")
    parser.add_argument("--ref", help="branch, tag or commit (default: HEAD)")
    parser.add_argument("--open", action="store_true", help="open the session in a browser")
    parser.add_argument(
        "--gateway",
        default=os.environ.get("BINDERY_URL")
        or os.environ.get("BINDERY_PUBLIC_URL")
        or DEFAULT_GATEWAY,
        help="the Bindery to use (default: $BINDERY_URL, else %(default)s)",
    )
    parser.add_argument("--provider", help="provider id (default: detected from the URL)")
    parser.add_argument("--urlpath", default="lab", help="path to open in the session")
    parser.add_argument("--build-only", action="store_true", help="build the image only")
    parser.add_argument("--quiet", action="store_true", help="show the bar, not the log")
    parser.set_defaults(func=run)
