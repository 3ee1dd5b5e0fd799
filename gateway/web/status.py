"""IT status page and the machine endpoints (none of them carries patient data).

- ``/status``: the page, for IT and admins (login required even without patient data: it names devices,
  broker state and errors, which is operational detail a waiting room should not read).
- ``/api/status``: its JSON twin, polled by the page. A logged-in IT user or admin, or a script sending
  ``Authorization: Bearer <token>`` with the token in ``web.status_token_file`` (a 0600 secret file). A
  token file rather than a login because monitoring scripts cannot do a CSRF-protected form login, and a
  read-only token can be rotated without touching user accounts.
- ``/healthz``: 200 or 503 with the reasons, for monitors.
- ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from flask_login import current_user

from gateway.web.auth import roles_required
from gateway.web.context import services, web_context
from gateway.web.metrics import CONTENT_TYPE, metrics_text

bp = Blueprint("status", __name__)

HISTORY_HOURS = 6.0
REFRESH_S = 10
"""How often the page refreshes itself from ``/api/status`` (app config ``CG_STATUS_REFRESH_S`` overrides)."""


def status_document() -> dict[str, Any]:
    """``services.status()`` plus the queue history, drain rate and last ack."""
    svc = services()
    doc = svc.status()
    doc["queue"] = svc.queue_history(HISTORY_HOURS)
    return doc


def _bearer_ok() -> bool:
    token = web_context().status_token
    header = request.headers.get("Authorization", "")
    if token is None or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), token.encode())


@bp.get("/status")
@roles_required("it")
def page() -> ResponseReturnValue:
    """The IT status page (rendered once, then refreshed from ``/api/status`` by status.js)."""
    refresh_s = current_app.config.get("CG_STATUS_REFRESH_S", REFRESH_S)
    return render_template("status.html", status=status_document(), history_hours=HISTORY_HOURS, refresh_s=refresh_s)


@bp.get("/api/status")
def api_status() -> ResponseReturnValue:
    """The status page's data as JSON."""
    if not _bearer_ok():
        if not current_user.is_authenticated:
            return {"error": "login or bearer token required"}, 401
        if not current_user.has_role("it"):
            abort(403)
    return jsonify(status_document())


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """200 when the store answers and every component is healthy, else 503 with the reasons."""
    check = services().health()
    return {"ok": check.ok, "problems": list(check.problems)}, 200 if check.ok else 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics."""
    return Response(metrics_text(services()), content_type=CONTENT_TYPE)
