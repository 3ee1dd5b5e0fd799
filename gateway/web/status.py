"""IT status page and the machine endpoints (none of them carries patient data).

- ``/status``: the page, for IT and admins (login required even without patient data: it names devices,
  broker state and errors, which is operational detail a waiting room should not read).
- ``/api/status``: its JSON twin, polled by the page. A logged-in IT user or admin, or a script sending
  ``Authorization: Bearer <token>`` with the token in ``web.status_token_file`` (a 0600 secret file). A
  token file rather than a login because monitoring scripts cannot do a CSRF-protected form login, and a
  read-only token can be rotated without touching user accounts.
- ``/healthz``: the health model's answer (:func:`gateway.health.assess`) as JSON: 200 while green or
  amber, 503 when red, with the named problems either way.
- ``/metrics``: Prometheus text format, with the same model's level and one gauge per problem kind.

The badge on the page, ``/healthz`` and ``/metrics`` show one answer: ``services.health()``. The page adds
one judgement the server cannot make about itself: when its last good refresh is older than
``health.page_stale_s``, it turns red with "no answer from the gateway since ..." (status.js).
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import current_user

from gateway.web import i18n
from gateway.web.auth import roles_required
from gateway.web.context import services, web_context
from gateway.web.metrics import CONTENT_TYPE, metrics_text

bp = Blueprint("status", __name__)

REFRESH_S = 10
"""How often the page refreshes itself from ``/api/status`` (app config ``CG_STATUS_REFRESH_S`` overrides)."""


def status_document(window_hours: float | None = None) -> dict[str, Any]:
    """``services.status()`` plus the queue history (``window_hours``, or chosen from the data), drain rate
    and last ack."""
    svc = services()
    doc = svc.status()
    doc["queue"] = svc.queue_history(window_hours)
    return doc


def _window() -> float | None:
    """The chart window the page asked for (``?window=`` hours), None for the automatic one."""
    try:
        hours = float(request.args.get("window", ""))
    except ValueError:
        return None
    return hours if 0 < hours <= 24 else None


def status_texts() -> dict[str, Any]:
    """The words status.js needs, in the page's language: names for every code the status document carries
    (states, kinds, components, errors, problems) and the sentences it fills in (``%(name)s`` placeholders)."""
    return {
        "linkStates": i18n.texts(i18n.LINK_STATE_NAMES),
        "deviceStates": i18n.texts(i18n.DEVICE_STATE_NAMES),
        "deviceKinds": i18n.texts(i18n.DEVICE_KIND_NAMES),
        "transports": i18n.texts(i18n.TRANSPORT_NAMES),
        "components": i18n.texts(i18n.COMPONENT_NAMES),
        "outboxKinds": i18n.texts(i18n.OUTBOX_KIND_NAMES),
        "errorTypes": i18n.texts(i18n.ERROR_TYPE_NAMES),
        "events": i18n.texts(i18n.EVENT_TEXT),
        "problems": i18n.texts(i18n.PROBLEM_TEXT),
        "levels": i18n.texts(i18n.LEVEL_NAMES),
        "thresholds": i18n.texts(i18n.THRESHOLD_NAMES),
        "eventLevels": {"warning": _("warning"), "error": _("error"), "info": _("note")},
        "healthy": _("healthy"),
        "unhealthy": _("not working"),
        "bug": _("a bug"),
        "downFor": _("for %(duration)s"),
        "stale": _("No answer from the gateway since %(time)s."),
        "drain": {
            "offline": _("0 messages/min: no link"),
            "idle": _("idle: nothing to send"),
            "measuring": _("measuring…"),
            "draining": _("%(rate)s messages/min"),
        },
        "diskFree": _("%(free)s free of %(total)s"),
        "restarts": _("restarted %(n)s times"),
        "emptyChart": _("No samples yet."),
        "contractReason": _("does not follow the message contract"),
        "modelMissing": _("not loaded"),
    }


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
    stale_s = current_app.config.get("CG_STATUS_STALE_S", web_context().config.health.page_stale_s)
    return render_template(
        "status.html", status=status_document(), status_texts=status_texts(), refresh_s=refresh_s, stale_s=stale_s
    )


@bp.get("/api/status")
def api_status() -> ResponseReturnValue:
    """The status page's data as JSON."""
    if not _bearer_ok():
        if not current_user.is_authenticated:
            return {"error": "login or bearer token required"}, 401
        if not current_user.has_role("it"):
            abort(403)
    return jsonify(status_document(_window()))


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The health model's answer: 200 while green or amber, 503 when red; the named problems either way."""
    health = services().health()
    return health.as_json(), 200 if health.ok else 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics."""
    return Response(metrics_text(services()), content_type=CONTENT_TYPE)
