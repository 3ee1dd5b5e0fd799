"""Referral inbox: the decisions the hospital's graders sent down (``cmd/referral``), for the desk staff.

- ``/referrals``: every decision nobody has acknowledged yet (highlighted) and the newest acknowledged
  ones, newest first, with the patient id, the photo's eye and field when this gateway took it, the
  decision, the grader and the note as received. Technicians, nurses and admins; not IT (patient data).
- ``POST /referrals/<referral_id>/acknowledge``: marks one decision seen (CSRF-checked, audited by the
  facade). Referral ids are the platform's opaque ids, not patient data, so they may appear in URLs and logs.
- The navigation of those roles shows the unseen count as a badge; ``/referrals/api/unseen`` answers the
  same count (and nothing else) for ``referrals.js``, which keeps the badge current on a page left open.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user

from gateway.errors import GatewayError
from gateway.web.auth import roles_required
from gateway.web.context import services

_logger = logging.getLogger(__name__)

bp = Blueprint("referrals", __name__, url_prefix="/referrals")

INBOX_ROLES = ("technician", "nurse")
"""Who reads the inbox (admins too, as everywhere); IT sees no patient data."""
REFRESH_S = 60
"""How often an open page asks for the unseen count (app config ``CG_REFERRAL_REFRESH_S`` overrides)."""
RECENT = 100
"""Acknowledged decisions kept on the page besides every unseen one."""

DECISION_TEXT = {
    "refer_urgent": _l("Refer urgently"),
    "refer_routine": _l("Refer (routine)"),
    "rescreen_6m": _l("Rescreen in 6 months"),
    "rescreen_12m": _l("Rescreen in 12 months"),
    "no_dr": _l("No diabetic retinopathy"),
    "ungradable_retake": _l("Ungradable: take the photos again"),
}
"""The decisions of the message contract (docs/contract/cg.referral-1.json); others show as received."""
URGENT = frozenset({"refer_urgent"})


def decision_text(decision: str) -> str:
    """The desk's words for a grader's decision (the code itself when the contract gains a new one)."""
    text = DECISION_TEXT.get(decision)
    return decision if text is None else str(text)


def _may_read_inbox() -> bool:
    return bool(current_user.is_authenticated and current_user.has_role(*INBOX_ROLES))


@bp.app_context_processor
def _nav_badge() -> dict[str, object]:
    """The unseen count for the navigation of the roles that read the inbox (None for the others)."""
    if not _may_read_inbox():
        return {"referral_unseen": None}
    try:
        unseen = services().unseen_referral_count()
    except GatewayError:  # a store problem must not also break the page (and its error page) around the badge
        _logger.debug("unseen referral count unavailable", exc_info=True)
        return {"referral_unseen": None}
    return {
        "referral_unseen": unseen,
        "referral_refresh_s": current_app.config.get("CG_REFERRAL_REFRESH_S", REFRESH_S),
    }


@bp.get("")
@roles_required(*INBOX_ROLES)
def inbox() -> ResponseReturnValue:
    """The decisions received, newest first; unseen ones highlighted, each with its acknowledge button."""
    svc = services()
    return render_template(
        "referrals.html",
        referrals=svc.referral_inbox(recent=RECENT),
        unseen=svc.unseen_referral_count(),
        decision_text=decision_text,
        urgent=URGENT,
    )


@bp.post("/<referral_id>/acknowledge")
@roles_required(*INBOX_ROLES)
def acknowledge(referral_id: str) -> ResponseReturnValue:
    """Mark one decision as seen at the desk (audited with the user's name)."""
    svc = services()
    if svc.referral(referral_id) is None:
        abort(404)
    if svc.acknowledge_referral(referral_id, current_user.username):
        _logger.info("user %s acknowledged referral %s", current_user.username, referral_id)
        flash(_("Decision acknowledged."), "ok")
    else:
        flash(_("Someone already acknowledged this decision."), "info")
    return redirect(url_for("referrals.inbox"))


@bp.get("/api/unseen")
@roles_required(*INBOX_ROLES)
def api_unseen() -> ResponseReturnValue:
    """The unseen count for the navigation badge (no patient data in this answer)."""
    return {"unseen": services().unseen_referral_count()}
