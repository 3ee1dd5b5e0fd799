"""Pushed desk progress: server-sent events for both desks (a photo's verdict, a meter download's n of N).

The desk pages used to ask every 500 ms whether their request had finished, so a verdict ready in 0.17 s
appeared up to a polling interval (and a page load) later. Now the page opens one ``EventSource`` on
``/desk/events/<request id>`` and the server sends each change the moment the core posts it (the runtime's
progress board wakes the stream through a condition: no polling loop, no CPU while nothing changes).

Waitress serves each stream from one of its few worker threads, so a stream is bounded on every side:

- at most :data:`MAX_STREAMS` at once (half the 8 worker threads: the pages stay usable); the next one is
  answered 503 and the page falls back to polling (``poll.js``);
- a heartbeat comment every ``CG_PUSH_HEARTBEAT_S`` seconds keeps proxies from closing an idle stream;
- a stream ends when its request is finished, after ``CG_PUSH_LIFETIME_S`` seconds (the browser reconnects,
  sending ``Last-Event-ID``; the answer starts with a fresh snapshot, so nothing is missed), and when the tab
  is closed: the stream checks waitress's ``client_disconnected`` every :data:`DISCONNECT_CHECK_S` seconds
  (``channel_request_lookahead`` lets waitress notice the closed socket), so the thread is freed.

The events carry no patient data: state, n of N, finished, storage full. The page reloads for the outcome.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, request
from flask.typing import ResponseReturnValue
from flask_login import current_user

from gateway.desk import DeskKind, DeskProgress, RetinaProgress
from gateway.services import DeskSession, GatewayServices
from gateway.web.auth import desk_record, roles_required
from gateway.web.context import services

_logger = logging.getLogger(__name__)

bp = Blueprint("push", __name__, url_prefix="/desk")

MAX_STREAMS = 4
"""Event streams served at once; each holds a waitress worker thread for its life: half of
``gateway.web.component.WEB_THREADS`` (a test keeps the two in step; imported here, it would be a cycle)."""
HEARTBEAT_S = 15.0
LIFETIME_S = 300.0
DISCONNECT_CHECK_S = 2.0
"""How often a waiting stream looks whether its tab was closed (a wake-up, not a busy loop)."""
RETRY_MS = 1000
"""How soon the browser reconnects after a stream ends (the ``retry:`` field)."""
EXTENSION_KEY = "cg_push_streams"


class StreamSlots:
    """The bounded number of event streams of one app (thread-safe); ``open`` is how many are being served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Claim a slot (False: all taken)."""
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def give_back(self) -> None:
        """Free a slot when a stream ends."""
        with self._lock:
            self.open -= 1


def init_app(app: Flask) -> None:
    """Register the blueprint and the app's stream slots and timings (tests shorten the timings)."""
    app.config.setdefault("CG_PUSH_HEARTBEAT_S", HEARTBEAT_S)
    app.config.setdefault("CG_PUSH_LIFETIME_S", LIFETIME_S)
    app.extensions[EXTENSION_KEY] = StreamSlots(MAX_STREAMS)
    app.register_blueprint(bp)


def stream_slots(app: Flask) -> StreamSlots:
    """The app's stream slots (tests read ``open``: a closed tab must give its slot back)."""
    slots: StreamSlots = app.extensions[EXTENSION_KEY]
    return slots


_DESK_ROLE = {DeskKind.METER: "nurse", DeskKind.RETINA: "technician"}


def progress_json(progress: DeskProgress) -> dict[str, Any]:
    """What a desk page needs of a session's progress (no patient data): the same fields the polling
    endpoints answer, so the page treats both alike."""
    return {
        "state": str(progress.state),
        "finished": progress.state.finished,
        "done": progress.done,
        "total": progress.total,
        "storage_full": isinstance(progress, RetinaProgress) and progress.storage_full,
    }


@bp.get("/events/<request_id>")
@roles_required("nurse", "technician")
def events(request_id: str) -> ResponseReturnValue:
    """The progress of a desk session or request as server-sent events (``event: progress``), until it is
    finished; 503 when every stream slot is taken (the page then polls)."""
    svc = services()
    found = svc.progress(request_id)
    if found is None:
        abort(404)
    if not current_user.has_role(_DESK_ROLE[found.kind]):
        # The other desk's session: as if it did not exist, audited (desk_record's rule).
        own = DeskKind.RETINA if found.kind is DeskKind.METER else DeskKind.METER
        desk_record(found, kind=str(own), target_id=request_id)
    slots = stream_slots(current_app)
    if not slots.take():
        _logger.info("event stream refused: all %d slots taken", slots.limit)
        return Response("busy", status=503, headers={"Retry-After": "5"}, mimetype="text/plain")
    config = current_app.config
    disconnected: Callable[[], bool] = request.environ.get("waitress.client_disconnected", lambda: False)
    body = _stream(svc, request_id, heartbeat_s=float(config["CG_PUSH_HEARTBEAT_S"]),
                   lifetime_s=float(config["CG_PUSH_LIFETIME_S"]), disconnected=disconnected,
                   release=slots.give_back)  # fmt: skip
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # the nginx in front must pass each event on at once
    return response


def _stream(
    svc: GatewayServices,
    request_id: str,
    *,
    heartbeat_s: float,
    lifetime_s: float,
    disconnected: Callable[[], bool],
    release: Callable[[], None],
) -> Iterator[str]:
    """The event stream's text; ``release`` runs however it ends (finished, timed out, tab closed). Runs after
    the view returned (outside the request's context): it gets the facade, never reaches for it."""
    try:
        yield f"retry: {RETRY_MS}\n\n"
        started = time.monotonic()
        last_sent: DeskProgress | None = None
        last_beat = started
        while True:
            version = svc.progress_version()  # before reading: a change after this read wakes the wait below
            found: DeskSession | None = svc.progress(request_id)
            if found is None:
                return
            if found.progress != last_sent:
                last_sent = found.progress
                last_beat = time.monotonic()
                yield f"id: {version}\nevent: progress\ndata: {json.dumps(progress_json(found.progress))}\n\n"
            if found.finished:
                return
            now = time.monotonic()
            if now - started >= lifetime_s:
                return  # the browser reconnects and gets a fresh snapshot
            if now - last_beat >= heartbeat_s:
                last_beat = now
                yield ": heartbeat\n\n"
            wait = min(DISCONNECT_CHECK_S, heartbeat_s - (now - last_beat), lifetime_s - (now - started))
            svc.wait_progress(version, max(0.0, wait))
            if disconnected():
                return
    finally:
        release()
