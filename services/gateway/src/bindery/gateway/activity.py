"""What counts as a person using their session, and telling the culler: the gateway's half of
idle culling.

In: each proxied request's method and path below `/user/<session>/`, and the opcode of each
websocket frame the browser sends (`splice.FrameEdges`). Out: whether it is activity; the proxy
then notes the time on the session's route (`routes.Route.touch`), in memory so no request
waits on the broker, and `flush_activity`, a loop of the gateway's, publishes it in batches to
the culler as `session-activity` events.

The rule, and why:
- A request that changes something (any method but GET, HEAD and OPTIONS) is activity. Only a
  person's actions do that through Jupyter's REST API: saving, renaming, uploading or deleting
  files, starting, restarting, interrupting or shutting down kernels and terminals, running
  code through REST, changing the layout or a setting (`PUT lab/api/workspaces`,
  `lab/api/settings`). OPTIONS are CORS preflights, sent by the browser for a later request.
- A GET or HEAD is activity when it loads a page or what a page shows (lab, tree, notebooks,
  edit, files, view, voila, nbconvert and their static assets), not when its path is an API
  (`api/...`, or an application's `<app>/api/...` such as `lab/api/...`). While a tab is open,
  JupyterLab 4 polls api/kernels, api/sessions and api/terminals every 10 s (the `Poll`s of
  @jupyterlab/services, backing off while the tab is hidden), api/kernelspecs, the shown
  directory's api/contents listing, api/me and lab/api/ settings; extensions poll more
  (jupyter-resource-usage's api/metrics). Opening a file is an api/contents GET too, but what a
  person then does with it (run, edit, save) is a kernel message or a write.
- A websocket's handshake is not activity (JupyterLab reconnects its kernel, terminal and event
  websockets by itself), nor is anything the session sends: output streams from a running
  kernel, the server's pings. A busy kernel is the culler's to see, from the session's own
  account (bindery.culler.jupyter).
- A data frame the browser sends (text, binary or their continuation) is activity: a kernel
  message (execute, complete, inspect, a widget's comm message) or a terminal's keystroke or
  resize. Control frames are not: the pongs with which the browser answers Jupyter Server's
  pings every 30 s, its own pings, its close.

Known limits: a widget that sends comm messages from the browser on a timer keeps its session
active; so does real-time collaboration (jupyter-collaboration), whose document websocket
re-sends the tab's awareness state every 15 s. The maximum age still stops both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from bindery.events import SessionActivity
from bindery.gateway.routes import RouteTable

log = structlog.get_logger("bindery.gateway.activity")

# Methods that read: whether they are activity depends on what they read.
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Websocket opcodes that carry a message (RFC 6455 5.2): continuation, text, binary. 0x3-0x7
# are reserved for data frames too; 0x8 and up are control frames (close, ping, pong).
_FIRST_CONTROL_OPCODE = 0x8


def is_person_request(method: str, path: str) -> bool:
    """Whether a request to a session is activity. `path` is what follows `/user/<session>/`."""
    if method not in _READS:
        return True
    if method == "OPTIONS":
        return False
    first, _, rest = path.partition("/")
    return first != "api" and not rest.startswith("api/") and rest != "api"


def is_data_frame(opcode: int) -> bool:
    """Whether a websocket frame the browser sends is activity (see the module's rule)."""
    return opcode < _FIRST_CONTROL_OPCODE


Publish = Callable[[SessionActivity], Awaitable[None]]


async def flush_activity(routes: RouteTable, publish: Publish) -> int:
    """Publish one SessionActivity per session active since the last flush; returns how many."""
    sent = 0
    for route in routes.due_activity():
        seen = route.last_activity
        event = SessionActivity(
            launch_id=route.launch_id,
            session=route.session,
            last_activity=datetime.fromtimestamp(seen, UTC),
        )
        try:
            await publish(event)
        except Exception as exc:  # the broker is down: keep it for the next round
            log.warning("activity.publish_failed", session=route.session, error=str(exc))
            break
        route.flushed_activity = seen
        sent += 1
    if sent:
        log.debug("activity.flushed", sessions=sent)
    return sent
