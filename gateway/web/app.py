"""The Flask app factory: one app per facade, no module globals.

Security set-up in one place: the session secret from a 0600 file (created on first run), cookie flags
(Secure per ``web.secure_cookies``, HttpOnly, SameSite=Lax), CSRF on every form (Flask-WTF), a strict
Content-Security-Policy (everything is served from the gateway itself: the clinic network is closed),
and ``no-store`` caching so a shared clinic PC's back button does not show the last patient's page.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from flask import Flask, Response, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import Babel
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.security import generate_password_hash

from gateway.config import GatewayConfig, read_secret
from gateway.errors import ConfigError, DiskFull, IntakeRefused, StoreError
from gateway.services import GatewayServices
from gateway.web import auth, i18n, nurse, push, referrals, status, technician
from gateway.web.context import EXTENSION_KEY, WebContext

_logger = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


def load_or_create_secret(path: Path) -> str:
    """The session secret: read from ``path`` (which must be 0600), or created there 0600 on first run."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile: read theirs
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            _logger.info("created the web session secret %s", path)
    secret = read_secret(path)
    if len(secret) < 32:
        raise ConfigError([("web.secret_key_file", f"secret in {path} is shorter than 32 characters")], str(path))
    return secret


def create_app(services: GatewayServices, config: GatewayConfig) -> Flask:
    """Build the pages for ``services`` under ``config`` (raises ConfigError for an unusable secret file)."""
    app = Flask(__name__)
    web = config.web
    token = read_secret(web.status_token_file) if web.status_token_file is not None else None
    app.config.update(
        SECRET_KEY=load_or_create_secret(config.web_secret_path),
        SESSION_COOKIE_NAME="cg_session",
        SESSION_COOKIE_SECURE=web.secure_cookies,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=web.secure_cookies,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        # The server-side session (gateway.store.logins) decides who is logged in; the cookie and the CSRF
        # tokens in it live as long as a session may, so a page left open all day still submits.
        PERMANENT_SESSION_LIFETIME=timedelta(hours=web.session_max_hours),
        WTF_CSRF_TIME_LIMIT=web.session_max_hours * 3600,
        MAX_CONTENT_LENGTH=int((config.retina.max_image_mb + 1) * 1024 * 1024),
        BABEL_TRANSLATION_DIRECTORIES=str(i18n.TRANSLATIONS_DIR),
        CG_DUMMY_HASH=generate_password_hash(secrets.token_hex(16)),
    )
    app.extensions[EXTENSION_KEY] = WebContext(services=services, config=config, status_token=token)
    CSRFProtect(app)
    Babel(app, locale_selector=i18n.select_locale, default_locale="en")
    auth.init_login(app)
    for blueprint in (auth.bp, i18n.bp, status.bp, nurse.bp, technician.bp, referrals.bp):
        app.register_blueprint(blueprint)
    push.init_app(app)

    @app.context_processor
    def _globals() -> dict[str, object]:
        return {
            "languages": i18n.LANGUAGES,
            "page_language": i18n.page_language(),
            "site_id": config.gateway.site_id,
            "gateway_id": config.gateway.gateway_id,
            "role_names": i18n.ROLE_NAMES,
            "state_names": i18n.STATE_NAMES,
            "meal_names": i18n.MEAL_NAMES,
            "storage_full_text": i18n.STORAGE_FULL_TEXT,
            "clinic_tz": config.gateway.timezone,
            "cg_texts": {**i18n.texts(i18n.COMMON_TEXTS), "units": i18n.texts(i18n.DURATION_UNITS)},
        }

    clinic_tz = ZoneInfo(config.gateway.timezone)
    app.add_template_filter(lambda value: i18n.local_time(value, clinic_tz), "localtime")

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"  # CSRF over HTTPS checks the referrer
        response.headers["X-Frame-Options"] = "DENY"
        if not request.path.startswith("/static/") and "Cache-Control" not in response.headers:
            # Pages hold patient data: never stored. A view that may be cached says how itself (a photo:
            # ``private``, by this browser only).
            response.headers["Cache-Control"] = "no-store"
        response.vary.add("Accept-Language")
        response.vary.add("Cookie")
        return response

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> ResponseReturnValue:
        _logger.warning("refused a form without a valid CSRF token on %s", request.path)
        message = _("This form has expired or did not come from this gateway. Go back, reload the page and try again.")
        return render_template("error.html", code=400, message=message), 400

    def _storage_full(exc: StoreError) -> ResponseReturnValue:
        # A full store (or one below its free-space floor) refused a write: nothing of this request was
        # stored, which is what the desk must hear, in its language, never as a 500.
        _logger.warning("refused %s %s: %s: %s", request.method, request.path, type(exc).__name__, exc)
        if "/api/" in request.path:
            return {"error": "storage full"}, 507
        return render_template("error.html", code=507, message=i18n.STORAGE_FULL_TEXT), 507

    app.register_error_handler(DiskFull, _storage_full)
    app.register_error_handler(IntakeRefused, _storage_full)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> ResponseReturnValue:
        if "/api/" in request.path:
            return {"error": exc.name}, exc.code or 500
        messages = {
            403: _("Your role may not open this page."),
            404: _("There is no such page or record."),
            413: _("The file is too large."),
        }
        message = messages.get(exc.code or 0, exc.name)
        return render_template("error.html", code=exc.code, message=message), exc.code or 500

    return app
