"""A private package index on 127.0.0.1 for tests: a PEP 503 simple API behind Basic auth,
holding one pure-Python wheel, `bindery-index-probe`, whose module says ``ANSWER``.

Its pages link the wheel by absolute URL (the index's own address), as real mirrors often do,
so a forwarder has to rewrite them. It records every request with whether it was authorised.
"""

from __future__ import annotations

import base64
import hashlib
import io
import secrets
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
    requests: list[tuple[str, bool]] = field(default_factory=list)
    """(path, authorised) of every request."""

    @property
    def url(self) -> str:
        """The index URL with its credentials, as an operator configures it."""
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}/simple"


@contextmanager
def served_index() -> Iterator[PrivateIndex]:
    wheel = probe_wheel()
    digest = hashlib.sha256(wheel).hexdigest()
    index = PrivateIndex(0, "reader", secrets.token_hex(12))
    expected = "Basic " + base64.b64encode(f"{index.user}:{index.password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            authorised = self.headers.get("Authorization") == expected
            index.requests.append((self.path, authorised))
            if not authorised:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
                self.end_headers()
                return
            origin = f"http://127.0.0.1:{index.port}"
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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    index.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()
