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

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from flask import Blueprint, redirect, request, session
from flask.typing import ResponseReturnValue
from flask_babel import lazy_gettext as _l
from flask_login import current_user

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

bp = Blueprint("i18n", __name__)


def local_time(value: str | None, tz: ZoneInfo) -> str:
    """A stored ISO time as the clinic's wall-clock time (``2026-11-23 14:05``); a dash when absent."""
    if not value:
        return "\u2013"  # en dash
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(tz)
    return moment.strftime("%Y-%m-%d %H:%M")


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
