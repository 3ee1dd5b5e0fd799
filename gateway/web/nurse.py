"""Nurse desk: patient id (typed or scanned), meters detected, download with progress, readings, link.

Patient ids travel only in POST bodies and in the server-rendered pages, never in URLs (which end up in
browser history and proxy logs) or in log lines. The download runs in the asyncio core; this page asks
for it through the facade and polls its progress.
"""

from __future__ import annotations

import logging
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import current_user

from gateway.services import DeskSession, DeskUnavailable, DeviceView, ReadingKind, VisitPicture
from gateway.web import i18n
from gateway.web.auth import desk_record, roles_required
from gateway.web.context import services, web_context
from gateway.web.glucose_chart import build_chart, display_value
from gateway.web.i18n import CUFF_STATUS_NAMES

_logger = logging.getLogger(__name__)

bp = Blueprint("nurse", __name__, url_prefix="/nurse")

HYPO_MMOL_L = 3.9
HYPER_MMOL_L = 13.9
"""Defaults of ``glucose.low_mmol_l`` and ``glucose.very_high_mmol_l``, which the pages use."""
MAX_PATIENT_ID = 64
CUFF_USERS = range(1, 5)
"""The cuff users the desk offers (home cuffs keep two to four; the Blood Pressure Service allows 0-254)."""


def clean_patient_id(raw: str | None) -> str | None:
    """A patient id as typed or scanned (scanners add the Enter; some add spaces), or None when unusable."""
    value = (raw or "").strip()
    if not value or len(value) > MAX_PATIENT_ID or not value.isprintable():
        return None
    return value


def clean_cuff_user(raw: str | None) -> int | None:
    """The cuff user chosen for a multi-user cuff, or None (the cuff's one user is this patient: see
    :class:`gateway.meters.session.CuffOwner`)."""
    value = (raw or "").strip()
    return int(value) if value.isdigit() and int(value) <= 254 else None


def _reading_kind(raw: str | None) -> ReadingKind | None:
    """The kind of readings a form assigns (glucose when it names none), None when it names another."""
    try:
        return ReadingKind(raw or ReadingKind.GLUCOSE)
    except ValueError:
        return None


def glucose_band(mmol_l: float, low: float = HYPO_MMOL_L, high: float = HYPER_MMOL_L) -> str:
    """``low`` below ``low`` (3.9 mmol/L), ``high`` above ``high`` (13.9 mmol/L), else ``normal``."""
    if mmol_l < low:
        return "low"
    if mmol_l > high:
        return "high"
    return "normal"


def _meters() -> list[DeviceView]:
    return [d for d in services().devices() if d.kind == "meter"]


def failure_reason(state: str, error_type: str | None) -> str | None:
    """Why a download failed, in plain words in the page's language (never an exception's name or text); None
    when it did not fail."""
    if state != "failed":
        return None
    return str(i18n.DOWNLOAD_FAILURE_TEXT.get(error_type or "", i18n.DOWNLOAD_FAILED_TEXT))


def _desk_page(patient_id: str | None) -> str:
    """The desk: the patient, the meters detected, readings waiting for a patient, today's downloads (failed
    ones with their reason)."""
    svc = services()
    # Each of today's sessions with the reason it failed (None when it did not): the reason is the page's words.
    sessions = [(s, failure_reason(s.session.state, s.error_type)) for s in svc.sessions_today("meter")]
    return render_template(
        "nurse.html",
        patient_id=patient_id,
        meters=_meters(),
        sessions=sessions,
        unassigned=svc.unassigned_readings(),
        transport_names=i18n.TRANSPORT_NAMES,
        cuff_users=CUFF_USERS,
    )


@bp.route("", methods=["GET", "POST"])
@roles_required("nurse")
def desk() -> ResponseReturnValue:
    """Step 1: the patient id; then the meters detected, each with a download button."""
    patient_id = None
    if request.method == "POST":
        patient_id = clean_patient_id(request.form.get("patient_id"))
        if patient_id is None:
            flash(_("Enter or scan a patient id."), "error")
    return _desk_page(patient_id)


@bp.post("/assign")
@roles_required("nurse")
def assign() -> ResponseReturnValue:
    """Give a meter's readings stored without a patient (a cuff's: one cuff user's) to the patient typed (one
    action, audited by the store, a correction queued for the platform). Back to the download page it came from,
    else the desk."""
    patient_id = clean_patient_id(request.form.get("patient_id"))
    meter_id = request.form.get("meter_id", "").strip()
    through = request.form.get("through", type=int)
    record = _reading_kind(request.form.get("record"))
    back = request.form.get("back", "").strip()
    if patient_id is None or not meter_id or through is None or record is None:
        flash(_("Enter or scan a patient id, then assign the readings."), "error")
    else:
        # A full store answers with the desks' 507 page (the app's handler): nothing is assigned then.
        result = services().assign_readings(
            meter_id,
            patient_id,
            through=through,
            actor=current_user.username,
            record=record,
            cuff_user=clean_cuff_user(request.form.get("cuff_user")),
        )
        _logger.info(
            "user %s assigned %d %s readings of meter %s", current_user.username, result.count, record, meter_id
        )
        if result.count:
            flash(_("%(n)d readings assigned to patient %(patient)s.", n=result.count, patient=patient_id), "ok")
        else:
            flash(_("These readings were already assigned to a patient."), "info")
    if back and services().progress(back) is not None:
        return redirect(url_for("nurse.session", session_id=back))
    return _desk_page(patient_id)


@bp.post("/sync")
@roles_required("nurse")
def start_sync() -> ResponseReturnValue:
    """Step 2: ask the core to download the chosen meter for this patient."""
    patient_id = clean_patient_id(request.form.get("patient_id"))
    target = request.form.get("target", "").strip()
    if patient_id is None or not target:
        flash(_("Enter or scan a patient id, then choose a meter."), "error")
        return redirect(url_for("nurse.desk"))
    svc = services()
    try:
        session_id = svc.request_meter_sync(
            target,
            patient_id=patient_id,
            operator=current_user.username,
            cuff_user=clean_cuff_user(request.form.get("cuff_user")),
        )
    except DeskUnavailable:
        flash(_("No meter service is running. Ask IT to check the gateway."), "error")
        return _desk_page(patient_id)
    _logger.info("user %s started meter download %s on %s", current_user.username, session_id, target)
    return redirect(url_for("nurse.session", session_id=session_id))


def _session_or_404(session_id: str) -> DeskSession:
    return desk_record(services().progress(session_id), kind="meter", target_id=session_id)


@bp.get("/session/<session_id>")
@roles_required("nurse")
def session(session_id: str) -> ResponseReturnValue:
    """Step 3: progress (polled), then the readings to review and the link to confirm."""
    desk_session = _session_or_404(session_id)
    finished = desk_session.finished
    glucose = web_context().config.glucose
    hypo, hyper = glucose.low_mmol_l, glucose.very_high_mmol_l
    # A page of the download (the newest unless ?page=N), with counts over all of it: a first download may
    # bring a meter's whole history, thousands of readings.
    page = (
        services().session_readings(
            session_id, page=request.args.get("page", type=int), low_below=hypo, high_above=hyper
        )
        if finished
        else None
    )
    # Each reading of the page with its band (low, normal, high), which the table colours and names.
    readings = [(row, glucose_band(row.mmol_l, hypo, hyper)) for row in page.rows] if page else []
    # Control-solution tests check the meter, not the patient: listed apart, never banded or counted as readings.
    qc_here = services().session_qc(session_id) if finished else []
    meter_id = desk_session.meter_id
    qc_history = services().meter_qc_history(meter_id) if finished and meter_id else []
    # Readings of this meter still without a patient (this download's, or earlier auto-syncs'): a download for
    # a patient that found nothing new must say they are here, and offer to assign them. A cuff's other users'
    # measurements are someone else's: offered to whichever patient the nurse types, never to this one.
    waiting = services().unassigned_readings(meter_id) if finished and meter_id else []
    glucose_waiting = [g for g in waiting if g.record is ReadingKind.GLUCOSE]
    cuff_waiting = [g for g in waiting if g.record is ReadingKind.BLOOD_PRESSURE]
    return render_template(
        "nurse_session.html",
        session_id=session_id,
        desk_session=desk_session,
        progress=desk_session.progress,
        finished=finished,
        readings=readings,
        page=page,
        hypo=hypo,
        hyper=hyper,
        qc_here={row.qc_id for row in qc_here},
        qc_history=qc_history,
        unassigned=glucose_waiting[0] if glucose_waiting else None,
        cuff_unassigned=cuff_waiting,
        **(_picture(desk_session.patient_id) if finished and desk_session.patient_id else _units()),
        reason=failure_reason(
            str(desk_session.state), desk_session.progress.error.type if desk_session.progress.error else None
        ),
        linked_patient=services().meter_patient(meter_id) if finished and meter_id else None,
        **_blood_pressure(session_id if finished else None),
    )


def _blood_pressure(session_id: str | None) -> dict[str, Any]:
    """What ``_blood_pressure.html`` needs: the blood pressure readings of the visit ``session_id`` belongs to
    (none before it finished), the programme's target and the cuff's flags' names. A partial of its own, so that
    the download page and the visit sheet show the same."""
    svc = services()
    return {
        "blood_pressure": svc.visit_blood_pressure(session_id) if session_id else [],
        "bp_target": svc.bp_target(),
        "cuff_status_names": CUFF_STATUS_NAMES,
    }


def _units() -> dict[str, Any]:
    """The configured glucose unit (``glucose.unit``) and ``fmt``, which shows a mmol/L value in it."""
    unit = web_context().config.glucose.unit

    def fmt(mmol_l: float | None) -> str:
        return "\u2013" if mmol_l is None else display_value(mmol_l, unit)

    return {"unit": unit, "fmt": fmt}


def _picture(patient_id: str) -> dict[str, Any]:
    """What ``_glucose_picture.html`` needs for the patient: readings since the last visit, chart and summary,
    in the configured unit."""
    config = web_context().config
    glucose = config.glucose
    picture = services().visit_picture(patient_id)
    chart = build_chart(picture, unit=glucose.unit, very_high=glucose.very_high_mmol_l,
                        tz=ZoneInfo(config.gateway.timezone))  # fmt: skip
    return {"picture": picture, "chart": chart, "very_high": glucose.very_high_mmol_l, **_units()}


@bp.get("/session/<session_id>/sheet")
@roles_required("nurse")
def sheet(session_id: str) -> ResponseReturnValue:
    """The patient's printable visit sheet (one page for a normal visit): the readings since the last visit,
    the chart and summary, the meter's QC apart, and the visit's blood pressure readings."""
    desk_session = _session_or_404(session_id)
    patient_id = desk_session.patient_id
    if patient_id is None:
        flash(_("Assign the readings to a patient first."), "error")
        return redirect(url_for("nurse.session", session_id=session_id))
    context = _picture(patient_id)
    picture: VisitPicture = context["picture"]
    meters = sorted({row.meter_id for row in picture.readings})
    qc = [row for meter in meters for row in services().meter_qc_history(meter)]
    _logger.info("user %s opened the visit sheet of session %s", current_user.username, session_id)
    return render_template("nurse_sheet.html", session_id=session_id, patient_id=patient_id, qc=qc,
                           **context, **_blood_pressure(session_id))  # fmt: skip


@bp.get("/api/progress/<session_id>")
@roles_required("nurse")
def api_progress(session_id: str) -> ResponseReturnValue:
    """n of N for the polling script (no patient data in this answer)."""
    desk_session = _session_or_404(session_id)
    progress = desk_session.progress
    return {
        "state": str(progress.state),
        "done": progress.done,
        "total": progress.total,
        "meter_id": desk_session.meter_id,
        "finished": desk_session.finished,
    }


@bp.post("/session/<session_id>/link")
@roles_required("nurse")
def link(session_id: str) -> ResponseReturnValue:
    """Confirm the meter belongs to the session's patient (audited by the store)."""
    desk_session = _session_or_404(session_id)
    meter_id, patient_id = desk_session.meter_id, desk_session.patient_id
    if not meter_id or not patient_id:
        flash(_("This download has no meter or patient to link."), "error")
    else:
        services().link_meter(meter_id, patient_id, actor=current_user.username)
        _logger.info("user %s linked meter %s (session %s)", current_user.username, meter_id, session_id)
        flash(_("Meter linked to this patient."), "ok")
    return redirect(url_for("nurse.session", session_id=session_id))
