"""Technician desk: patient id, eye and field, live preview, capture or upload, quality verdict with
reasons and retake, the advisory triage result, and referral decisions from the platform.

Captures run in the retina service (``gateway.retina.service``) in the asyncio core; this page asks for
them through the facade and is told the outcome (pushed, :mod:`gateway.web.push`; polled where events cannot
flow). Without the retina service (or without a camera) the page still works and says so. Patient ids stay in
POST bodies and server-rendered pages, never in URLs or logs.

The photo is shown as soon as it is stored: a thumbnail (enlarged on click) with the quality gate's reasons
drawn over it (the field circle, the dark, clipped or blurred tiles: ``services.photos.geometry``), and each
visit's photos as a gallery where a photo replaced by its retake is greyed and says so. A retake repeats the
way the photo came: the camera again, a file again, or the camera's export folder.
"""

from __future__ import annotations

import logging
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user

from gateway.clock import clinic_time
from gateway.desk import RetinaProgress
from gateway.errors import CaptureError
from gateway.services import DeskSession, DeskUnavailable, PhotoSize, VisitPhoto
from gateway.web.auth import desk_record, roles_required
from gateway.web.context import services, web_context
from gateway.web.nurse import clean_patient_id
from gateway.web.referrals import decision_text as referral_text

_logger = logging.getLogger(__name__)

bp = Blueprint("technician", __name__, url_prefix="/technician")

EYES = ("R", "L")
FIELDS = ("disc", "macula")
VERDICT_WAIT_S = 2.0
"""How long taking or uploading a photo waits for its verdict before answering (holding one server thread)."""
PREVIEW_SECONDS = 300
"""A preview stream ends after this long (it holds a server thread); the page offers to restart it."""

REASON_TEXT = {
    "not_fundus": _l("This is not a retinal photo: photograph the fundus."),
    "too_dark": _l("Too dark: raise the flash or illumination, let the pupil dilate, clean the lens."),
    "overexposed": _l("Overexposed: lower the flash, check the camera's exposure setting."),
    "uneven_illumination": _l("Uneven light: re-align the camera on the pupil axis."),
    "small_pupil_vignetting": _l("Dark rim all around: wait for dilation, move closer to the pupil."),
    "not_centred": _l("Not centred: centre the fundus in the frame."),
    "field_incomplete": _l("Part of the field is cut off: move back or re-align so the whole circle shows."),
    "out_of_focus": _l("Out of focus: refocus, and check that the patient does not blink."),
    "motion_blur": _l("Motion blur: ask the patient to fixate and hold still, then take it again."),
    "jpeg_damage": _l("The file is damaged: export or transfer it again."),
}
DECISION_TEXT = {
    "refer": _l("Refer (advisory)"),
    "rescreen": _l("Rescreen at the usual interval (advisory)"),
    "ungradable": _l("Ungradable: treat as refer (advisory)"),
}
DECISION_ICON = {"refer": "\u26a0", "rescreen": "\u2713", "ungradable": "?"}
"""Refer and rescreen differ in colour, icon and words, not in colour alone (colour-blind readers, print)."""
SOURCE_TEXT = {
    "camera": _l("camera"),
    "upload": _l("uploaded file"),
    "folder": _l("camera's export folder"),
}
DELIVERY_TEXT = {
    "queued": _l("Queued for the hospital"),
    "held": _l("Held: the hospital link refused it (IT can retry)"),
    "delivered": _l("At the hospital"),
}
EYE_TEXT = {"R": _l("Right (OD)"), "L": _l("Left (OS)")}
FIELD_TEXT = {"macula": _l("Macula-centred"), "disc": _l("Disc-centred")}
MARK_TEXT = {
    "circle": _l("the camera's field as found"),
    "dark": _l("too dark"),
    "bright": _l("overexposed"),
    "blurred": _l("no sharp detail"),
}
"""The overlay's legend: what each kind of mark on the photo means."""


def reason_text(reason: str) -> str:
    """What the technician should do about a quality reason (the code itself when unknown)."""
    text = REASON_TEXT.get(reason)
    return reason if text is None else str(text)


def _retina_session(session_id: str) -> DeskSession:
    row = desk_record(services().progress(session_id), kind="retina", target_id=session_id)
    if not row.patient_id:  # a capture request's id, not a session's
        abort(404)
    return row


def _choice(value: str | None, allowed: tuple[str, ...]) -> str | None:
    return value if value in allowed else None


@bp.route("", methods=["GET", "POST"])
@roles_required("technician")
def desk() -> ResponseReturnValue:
    """Step 1: the patient id (typed or scanned) opens a capture session."""
    if request.method == "POST":
        patient_id = clean_patient_id(request.form.get("patient_id"))
        if patient_id is None:
            flash(_("Enter or scan a patient id."), "error")
        else:
            session_id = services().start_retina_session(patient_id, operator=current_user.username)
            return redirect(url_for("technician.session", session_id=session_id))
    return render_template(
        "technician.html",
        retina_available=services().retina_available(),
        visits=services().photos.visits_today(),
    )


def _session_page(session_id: str, result: RetinaProgress | None = None, **extra: Any) -> str:
    row = _retina_session(session_id)
    svc = services()
    photos = svc.photos.visit(session_id)
    outcome = None if result is None else result.outcome
    shown = next((p for p in photos if outcome is not None and p.capture_id == outcome.capture_id), None)
    tz = ZoneInfo(web_context().config.gateway.timezone)
    return render_template(
        "technician_session.html",
        session_id=session_id,
        patient_id=row.patient_id,
        retina_available=svc.retina_available(),
        camera_enabled=web_context().config.retina.camera.enabled,
        photos=photos,
        shown=shown,
        geometry=_geometry,
        referrals=svc.referrals(patient_id=row.patient_id),
        result=result,
        eyes=EYES,
        fields=FIELDS,
        reason_text=reason_text,
        decision_text=DECISION_TEXT,
        decision_icon=DECISION_ICON,
        source_text=SOURCE_TEXT,
        delivery_text=DELIVERY_TEXT,
        mark_text=MARK_TEXT,
        referral_text=referral_text,
        texts={
            "eye": EYE_TEXT,
            "field": FIELD_TEXT,
            "source": SOURCE_TEXT,
            "icon": DECISION_ICON,
            "decision": DECISION_TEXT,
            "delivery": DELIVERY_TEXT,
            # Photos a minute apart must not all read "10:40": the gallery shows seconds.
            "time": lambda value: clinic_time(value, tz, date=False, seconds=True),
        },
        **extra,
    )


def _geometry(photo: VisitPhoto) -> Any:
    """The overlay of a photo that failed the gate (a photo that passed has nothing to show)."""
    if photo.quality_ok:
        return None
    try:
        return services().photos.geometry(photo.capture_id)
    except CaptureError:  # a stored file that no longer decodes: the photo itself says so (no thumbnail)
        return None


@bp.get("/session/<session_id>")
@roles_required("technician")
def session(session_id: str) -> ResponseReturnValue:
    """Step 2: choose eye and field, watch the preview, capture (or upload) a photo."""
    return _session_page(session_id, eye=request.args.get("eye", "R"), field=request.args.get("field", "macula"))


def _submit(session_id: str, *, upload: bool) -> ResponseReturnValue:
    row = _retina_session(session_id)
    eye, field = _choice(request.form.get("eye"), EYES), _choice(request.form.get("field"), FIELDS)
    if eye is None or field is None:
        flash(_("Choose the eye (L/R) and the field (disc/macula)."), "error")
        return redirect(url_for("technician.session", session_id=session_id))
    svc = services()
    patient_id = row.patient_id
    assert patient_id is not None  # _retina_session: only sessions with a patient
    try:
        if upload:
            file = request.files.get("photo")
            data = file.read() if file is not None else b""
            if not data:
                # Said next to the file field, on the page the technician is on (a flash after a reload
                # read as nothing happening), with a client-error status.
                return _session_page(session_id, eye=eye, field=field, upload_error=True), 400
            request_id = svc.upload_capture(
                data,
                patient_id=patient_id,
                eye=eye,
                field=field,
                operator=current_user.username,
                session_id=session_id,
                retake_of=request.form.get("retake_of") or None,
            )
        else:
            request_id = svc.request_capture(
                patient_id=patient_id,
                eye=eye,
                field=field,
                operator=current_user.username,
                session_id=session_id,
                retake_of=request.form.get("retake_of") or None,
            )
    except DeskUnavailable:
        flash(_("The retina service is not running. Ask IT to check the gateway."), "error")
        return redirect(url_for("technician.session", session_id=session_id, eye=eye, field=field))
    # The audit row is written by the store together with the photo (never here, after handing it over).
    action = "upload" if upload else "capture"
    _logger.info("user %s asked for retina %s %s (session %s)", current_user.username, action, request_id, session_id)
    # Long-poll: the check takes a fraction of a second, so wait for it here and answer with the verdict page
    # itself (one page load). A slower check shows "Checking…" and the verdict is pushed to the page.
    svc.wait_finished(request_id, float(current_app.config.get("CG_VERDICT_WAIT_S", VERDICT_WAIT_S)))
    return redirect(url_for("technician.result", session_id=session_id, request_id=request_id, eye=eye, field=field))


@bp.post("/session/<session_id>/capture")
@roles_required("technician")
def capture(session_id: str) -> ResponseReturnValue:
    """Take a photo with the camera now (also the retake button)."""
    return _submit(session_id, upload=False)


@bp.post("/session/<session_id>/upload")
@roles_required("technician")
def upload(session_id: str) -> ResponseReturnValue:
    """Take a photo file from this computer (a camera that saves files, a USB stick); also the retake of an
    uploaded photo (``retake_of``), which asks for a file again, never the camera."""
    return _submit(session_id, upload=True)


def _request_state(request_id: str) -> RetinaProgress:
    progress = desk_record(services().progress(request_id), kind="retina", target_id=request_id).progress
    assert isinstance(progress, RetinaProgress)  # desk_record: of the retina desk
    return progress


@bp.get("/session/<session_id>/result/<request_id>")
@roles_required("technician")
def result(session_id: str, request_id: str) -> ResponseReturnValue:
    """Step 3: the verdict with reasons, the advisory triage, and the retake button (polled until done)."""
    state = _request_state(request_id)
    page = _session_page(
        session_id,
        result=state,
        request_id=request_id,
        eye=request.args.get("eye", "R"),
        field=request.args.get("field", "macula"),
        finished=state.state.finished,
    )
    # Nothing was stored because the store is full: say so with the status code too (507, as for a refusal).
    return (page, 507) if state.storage_full else page


@bp.get("/api/request/<request_id>")
@roles_required("technician")
def api_request(request_id: str) -> ResponseReturnValue:
    """State of a capture request for the polling script (no patient data)."""
    state = _request_state(request_id)
    return {"state": str(state.state), "finished": state.state.finished, "storage_full": state.storage_full}


@bp.get("/photo/<capture_id>/<size>.jpg")
@roles_required("technician")
def photo(capture_id: str, size: str) -> ResponseReturnValue:
    """A stored photo as a thumbnail or a screen-sized view (JPEG). Only the opaque capture id in the URL; kept
    by this browser only (``private``: never by a shared cache), revalidated by its ETag."""
    try:
        found = services().photos.photo(capture_id, PhotoSize(size))
    except (ValueError, CaptureError):  # not a size we make; a stored file that no longer decodes
        abort(404)
    if found is None:
        abort(404)
    response = Response(found.data, mimetype=found.media_type)
    response.set_etag(found.etag)
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response.make_conditional(request)


@bp.get("/preview.mjpg")
@roles_required("technician")
def preview() -> ResponseReturnValue:
    """The camera's live preview (MJPEG) for the page's ``<img>``; 503 without a retina service."""
    fps = web_context().config.retina.camera.preview_fps
    preview = services().preview_stream(max_frames=int(fps * PREVIEW_SECONDS))
    if preview is None:
        return Response(_("No camera preview: the retina service is not running."), status=503, mimetype="text/plain")
    content_type, stream = preview
    response = Response(stream, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response
