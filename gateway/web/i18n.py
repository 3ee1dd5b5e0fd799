"""Page language: Simplified Chinese or English, per user or per browser.

Choice order: the logged-in user's saved language (``users.language``), then the language picked with the
switch in this browser session, then the browser's ``Accept-Language``, then English. The switch (a small
form on every page) saves the choice for the user when logged in.

Catalogs: ``gateway/web/translations/zh_Hans_CN/LC_MESSAGES/messages.po`` with the compiled ``.mo`` next to
it, both committed (nothing to build on the Pi, no network). After changing page texts, from the repository
root::

    .venv/bin/pybabel extract -F gateway/web/babel.cfg -k _l --no-location --sort-output -o /tmp/messages.pot .
    .venv/bin/pybabel update -i /tmp/messages.pot -d gateway/web/translations -w 120 --no-fuzzy-matching
    # translate the new or fuzzy entries in messages.po, then
    .venv/bin/pybabel compile -d gateway/web/translations

``tests/web/test_web_i18n.py`` fails when a page text has no translation or the ``.mo`` does not match the
``.po``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from flask import Blueprint, redirect, request, session
from flask.typing import ResponseReturnValue
from flask_babel import LazyString
from flask_babel import lazy_gettext as _l
from flask_login import current_user

from gateway.clock import clinic_time
from gateway.web.context import services

TRANSLATIONS_DIR = Path(__file__).parent / "translations"
LANGUAGES: dict[str, str] = {"en": "English", "zh": "中文"}
"""Offered languages (code -> its own name, as the switch shows it)."""
BABEL_LOCALES: dict[str, str] = {"en": "en", "zh": "zh_Hans_CN"}
"""Page language code -> Babel locale of its catalog and number/date formats."""

ROLE_NAMES = {"nurse": _l("nurse"), "technician": _l("technician"), "it": _l("IT"), "admin": _l("admin")}
STATE_NAMES = {
    "queued": _l("waiting"),
    "connecting": _l("connecting to the meter"),
    "running": _l("downloading"),
    "done": _l("finished"),
    "interrupted": _l("interrupted: what arrived is kept; download again to continue"),
    "failed": _l("failed"),
}
STORAGE_FULL_TEXT = _l(
    "The gateway's storage is full: nothing was saved, please do not retake. "
    "Ask IT to free space (status page); everything stored before is safe and is still being sent."
)
"""What a desk sees when the store cannot take what was asked (HTTP 507)."""
MEAL_NAMES = {
    "before_meal": _l("before meal"),
    "after_meal": _l("after meal"),
    "fasting": _l("fasting"),
    "casual": _l("casual"),
    "bedtime": _l("bedtime"),
}
CUFF_STATUS_NAMES = {
    # what a blood pressure cuff said about a measurement (gateway.records.CuffStatus)
    "irregular_pulse": _l("irregular pulse"),
    "body_movement": _l("body movement"),
    "cuff_too_loose": _l("cuff too loose"),
    "pulse_rate_above_range": _l("pulse above range"),
    "pulse_rate_below_range": _l("pulse below range"),
    "improper_measurement_position": _l("improper measurement position"),
}

# -- words the pages show for the core's codes (states, kinds, names), in the page's language -----------------------
# The core speaks in codes (``unreachable``, ``image_chunk``, ``DeviceNotFound``); a page never shows one raw:
# it looks the code up here, and an unknown code (a kind added later) shows as a code (``translate="no"``).
DURATION_UNITS = {"d": _l("d"), "h": _l("h"), "min": _l("min"), "s": _l("s")}
"""Units of durations (``2 min 16 s`` / ``2分16秒``); ``CG.duration`` in cg.js joins them."""
COMMON_TEXTS = {"none": _l("none"), "never": _l("never"), "yes": _l("yes"), "no": _l("no")}
LINK_STATE_NAMES = {
    "stopped": _l("stopped"),
    "connecting": _l("connecting"),
    "online": _l("connected"),
    "auth_refused": _l("refused our login"),
    "tls_error": _l("TLS certificate problem"),
    "unreachable": _l("unreachable"),
    "config_error": _l("configuration error"),
    "backoff": _l("waiting to retry"),
    "not running": _l("not running"),
}
"""The forwarder's link states (``gateway.forward.forwarder.LinkState``)."""
DEVICE_STATE_NAMES = {
    "connected": _l("connected"),
    "running": _l("downloading"),
    "done": _l("finished"),
    "interrupted": _l("interrupted"),
    "failed": _l("failed"),
    "unplugged": _l("unplugged"),
    "unreachable": _l("unreachable"),
    "ok": _l("ready"),
}
"""The devices board's states (``gateway.desk.DeviceState``)."""
DEVICE_KIND_NAMES = {"meter": _l("glucose meter"), "camera": _l("fundus camera")}
TRANSPORT_NAMES = {
    "serial": _l("cable (serial)"),
    "ble": _l("Bluetooth"),
    "camera": _l("camera"),
    "folder": _l("folder"),
}
COMPONENT_NAMES = {
    "forwarder": _l("forwarding to the hospital"),
    "health": _l("health checks"),
    "retention": _l("clean-up of old data"),
    "meters": _l("glucose meters"),
    "retina": _l("retinal photos"),
    "web": _l("web pages"),
    "web-sampler": _l("queue chart sampler"),
    "synthetic": _l("demo readings"),
}
"""The daemon's components (their ``name``)."""
OUTBOX_KIND_NAMES = {
    "glucose": _l("glucose readings"),
    "assignment": _l("readings assigned to a patient"),
    "blood_pressure_assignment": _l("blood pressure readings assigned to a patient"),
    "capture": _l("retinal photo records"),
    "image_chunk": _l("retinal image parts"),
    "event": _l("events"),
    "meter": _l("meter details"),
}
"""Kinds of outbox messages (``outbox.kind``)."""
ERROR_TYPE_NAMES = {
    "DeviceNotFound": _l("device not found"),
    "DeviceTimeout": _l("the device did not answer"),
    "DeviceDisconnected": _l("the device disconnected"),
    "DeviceError": _l("device error"),
    "FrameError": _l("garbled data from the device"),
    "RecordError": _l("a record the device sent makes no sense"),
    "ProtocolError": _l("garbled data from the device"),
    "BrokerUnavailable": _l("the broker cannot be reached"),
    "BrokerAuthError": _l("the broker refused our login"),
    "BrokerTLSError": _l("TLS certificate problem"),
    "ForwardError": _l("link error"),
    "ConfigError": _l("configuration error"),
    "StoreError": _l("storage error"),
    "DiskFull": _l("disk full"),
    "ModelError": _l("triage model error"),
    "CaptureError": _l("unreadable photo"),
}
"""Error types (``ErrorInfo.type``, a component's last failure); others show as the type (a code)."""
DOWNLOAD_FAILURE_TEXT = {
    "DeviceNotFound": _l(
        "The meter did not answer. Check that it is switched on and its cable is plugged in (or its Bluetooth is "
        "on), then try again."
    ),
    "DeviceTimeout": _l("The meter stopped answering. Keep it connected and try again."),
    "DeviceDisconnected": _l("The meter was disconnected. What arrived is kept: connect it again and download again."),
    "DeviceError": _l("The meter could not be reached. Connect it again and try again."),
    "ProtocolError": _l("The meter sent data the gateway could not read. Try again; if it happens again, ask IT."),
    "FrameError": _l("The meter sent data the gateway could not read. Try again; if it happens again, ask IT."),
    "RecordError": _l("The meter sent data the gateway could not read. Try again; if it happens again, ask IT."),
    "DiskFull": STORAGE_FULL_TEXT,
    "IntakeRefused": STORAGE_FULL_TEXT,
    "StoreError": _l("The gateway could not save the readings. Ask IT to check the gateway."),
}
"""Why a meter download failed, for the nurse (by ``ErrorInfo.type``); :data:`DOWNLOAD_FAILED_TEXT` otherwise."""
DOWNLOAD_FAILED_TEXT = _l("The download did not work. Try again; if it happens again, ask IT.")
EVENT_TEXT = {
    "broker_link": _l("The link to the hospital's broker failed"),
    "clock_untrusted": _l("The clock is not synchronised: new readings are marked as time not checked"),
    "clock_synchronised": _l("The clock is synchronised again"),
    "disk_low": _l("Free disk space is low"),
    "disk_full": _l("The disk is full: new readings and photos are refused"),
    "disk_ok": _l("Free disk space is back above the warning level"),
    "store_unwritable": _l("The data folder takes no writes"),
    "store_writable": _l("The data folder takes writes again"),
    "store_quarantined": _l("The database was damaged: it was set aside and a new one started"),
    "component_failed": _l("A part of the gateway failed and was restarted"),
    "component_crashed": _l("A part of the gateway crashed (a bug) and was restarted"),
    "message_parked": _l("The broker refused a message: it was set aside"),
    "ack_for_unsent": _l("The hospital confirmed messages this gateway never sent (ignored)"),
    "referral_held": _l("A referral decision was held for review"),
    "downlink_dead_letter": _l("A message from the hospital was malformed and set aside"),
    "triage_failed": _l("The triage model failed on a photo (stored without triage)"),
    "folder_unavailable": _l("The camera's export folder cannot be read"),
    "capture_refused": _l("A photo file from the export folder was refused"),
}
"""What an event (``events.kind``) means, in words; the English ``message`` stays for the logs and the API."""
PROBLEM_TEXT = {
    "store_unavailable": _l("The database does not answer"),
    "store_unwritable": _l("The data folder takes no writes"),
    "broker_down": _l("No link to the hospital"),
    "outbox_late": _l("Data is late at the hospital"),
    "disk_low": _l("Free disk space is low"),
    "disk_full": _l("The disk is full: intake is refused"),
    "clock_untrusted": _l("The clock is not synchronised"),
    "component_failing": _l("A part of the gateway is not working"),
    "component_restarted": _l("A part of the gateway was restarted"),
    "model_missing": _l("The triage model is not loaded: photos are sent without triage"),
}
"""The health model's problems (``gateway.health.ProblemKind``), as the badge explains them."""
LEVEL_NAMES = {"green": _l("healthy"), "amber": _l("needs attention"), "red": _l("problem")}
THRESHOLD_NAMES = {"refer": _l("refer at"), "high_specificity": _l("high specificity at")}
"""The triage model's operating thresholds (its sidecar JSON)."""


def texts(table: Mapping[str, LazyString]) -> dict[str, str]:
    """A table of lazy texts in the page's language (for a page script's JSON)."""
    return {code: str(text) for code, text in table.items()}


bp = Blueprint("i18n", __name__)


def local_time(value: str | datetime | None, tz: ZoneInfo) -> str:
    """A stored time as the clinic reads it (``2026-11-23 10:40 UTC+8``): the ``localtime`` filter of every
    template, :func:`gateway.clock.clinic_time` (the one helper; ``CG.time`` in cg.js writes the same)."""
    return clinic_time(value, tz)


def page_language() -> str:
    """``en`` or ``zh`` for the current request."""
    if current_user.is_authenticated and current_user.language in LANGUAGES:
        return str(current_user.language)
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return str(chosen)
    return browser_language(request.accept_languages)


def browser_language(accepted: Iterable[tuple[str, float]]) -> str:
    """The first offered language among the browser's, best quality first, by primary subtag.

    (Werkzeug's ``best_match`` prefers an exact ``zh`` at q=0.5 over ``en-GB`` at q=1; a clinic PC
    set to British English should still get English.)
    """
    for tag, quality in accepted:
        primary = tag.replace("_", "-").split("-", 1)[0].lower()
        if quality > 0 and primary in LANGUAGES:
            return primary
    return "en"


def select_locale() -> str:
    """Flask-Babel's locale selector."""
    return BABEL_LOCALES[page_language()]


@bp.post("/lang")
def switch_language() -> ResponseReturnValue:
    """Switch the page language (saved for the user when logged in) and go back."""
    from gateway.web.auth import safe_next

    lang = request.form.get("lang", "")
    if lang not in LANGUAGES:
        return {"error": "unknown language"}, 400
    session["lang"] = lang
    if current_user.is_authenticated:  # saved and audited in one transaction
        services().users.set_language(current_user.username, lang, actor=current_user.username)
    return redirect(safe_next(request.form.get("next"), "/"))
