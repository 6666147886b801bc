"""A package index for tests: a PEP 503 simple API (behind Basic auth unless told otherwise),
holding one pure-Python wheel, `bindery-index-probe`, whose module says ``ANSWER``; on 127.0.0.1
by default, over TLS when given a certificate.

Its pages link the wheel by absolute URL (the index's own address), as real mirrors often do,
so a forwarder has to rewrite them. It records every request with whether it was authorised.

``python -m tests.support.pypiindex HOST PORT [CERT KEY]`` serves an open index (no credentials)
on HOST:PORT, e.g. inside a test's network namespace (tests.support.lan) where sessions reach
it; it prints ``ready`` and stops on SIGTERM.
"""

from __future__ import annotations

import base64
import hashlib
import io
import secrets
import signal
import ssl
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = "bindery-index-probe"
ANSWER = "answered-by-the-private-index"
WHEEL = "bindery_index_probe-1.0-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest},{len(data)}"


def probe_wheel() -> bytes:
    files = {
        "bindery_index_probe/__init__.py": f"ANSWER = {ANSWER!r}\n".encode(),
        "bindery_index_probe-1.0.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {NAME}\nVersion: 1.0\n"
        ).encode(),
        "bindery_index_probe-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: bindery-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},{_record_hash(data)}\n" for name, data in files.items())
    record += "bindery_index_probe-1.0.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("bindery_index_probe-1.0.dist-info/RECORD", record)
    return buffer.getvalue()


@dataclass
class PrivateIndex:
    port: int
    user: str
    password: str
    host: str = "127.0.0.1"
    scheme: str = "http"
    requests: list[tuple[str, bool]] = field(default_factory=list)
    """(path, authorised) of every request."""

    @property
    def url(self) -> str:
        """The index URL with its credentials (if any), as an operator configures it."""
        login = f"{self.user}:{self.password}@" if self.user else ""
        return f"{self.scheme}://{login}{self.host}:{self.port}/simple"


@contextmanager
def served_index(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    credentials: bool = True,
    tls: tuple[str, str] | None = None,
) -> Iterator[PrivateIndex]:
    """The index on ``host:port`` (0: any free port); ``tls`` is (certificate, key) files."""
    wheel = probe_wheel()
    digest = hashlib.sha256(wheel).hexdigest()
    index = (
        PrivateIndex(0, "reader", secrets.token_hex(12)) if credentials else PrivateIndex(0, "", "")
    )
    index.host = host
    index.scheme = "https" if tls else "http"
    expected = "Basic " + base64.b64encode(f"{index.user}:{index.password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            authorised = not credentials or self.headers.get("Authorization") == expected
            index.requests.append((self.path, authorised))
            if not authorised:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
                self.end_headers()
                return
            origin = f"{index.scheme}://{host}:{index.port}"
            if self.path.rstrip("/") == f"/simple/{NAME}":
                link = f'<a href="{origin}/files/{WHEEL}#sha256={digest}">{WHEEL}</a>'
                self._send(f"<html><body>{link}</body></html>".encode(), "text/html")
            elif self.path == f"/files/{WHEEL}":
                self._send(wheel, "application/octet-stream")
            else:
                self.send_response(404)
                self.end_headers()

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    index.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    files = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else None
    with served_index(sys.argv[1], int(sys.argv[2]), credentials=False, tls=files):
        print("ready", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
