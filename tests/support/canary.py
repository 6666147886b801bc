"""A canary on the host for the containment tests: files no build may read or write, and an
HTTP service on every host address that records any request made to it.

`secret` is in both files (one anyone may read, one root's alone, like .bindery/env): a test
shows the canary untouched when neither file changed, the forbidden path does not exist, the
service saw no request, and `secret` appears nowhere in what the launch told the user.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Canary:
    directory: Path
    secret: str
    port: int
    hits: list[str] = field(default_factory=list)

    @property
    def readable(self) -> Path:
        return self.directory / "readable.txt"

    @property
    def private(self) -> Path:
        return self.directory / "private.txt"

    @property
    def forbidden(self) -> Path:
        """A path a hostile build tries to create."""
        return self.directory / "pwned"

    def assert_untouched(self, told: str = "") -> None:
        """Neither read into ``told`` (what the launch said), nor written, nor called."""
        assert self.secret not in told, "the canary's secret reached the launch's messages"
        assert self.readable.read_text() == self.secret
        assert self.private.read_text() == self.secret
        assert not self.forbidden.exists(), "a build wrote on the host"
        assert self.hits == [], f"the host's canary service was reached: {self.hits}"


@contextmanager
def planted_canary() -> Iterator[Canary]:
    directory = Path(tempfile.mkdtemp(prefix="bindery-canary-"))
    directory.chmod(0o777)  # anyone may write here: only containment keeps builds out
    token = secrets.token_hex(16)
    hits: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(f"{self.client_address[0]} GET {self.path}")
            self.send_response(200)
            self.end_headers()
            self.wfile.write(token.encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    # Every IPv4 address of the host: loopback, the bridges' gateways, the LAN interface.
    server = ThreadingHTTPServer(("0.0.0.0", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    canary = Canary(directory, token, server.server_address[1], hits)
    canary.readable.write_text(token)
    canary.readable.chmod(0o644)
    canary.private.write_text(token)
    canary.private.chmod(0o600)
    try:
        yield canary
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)
