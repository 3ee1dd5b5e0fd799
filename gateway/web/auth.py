"""Login, logout and roles for the pages.

- Users live in the store's ``users`` table (``gateway user add``); passwords are hashed with
  ``werkzeug.security`` (scrypt).
- Sessions are server-side (:mod:`gateway.store.logins`): the signed cookie carries a random token whose
  digest names a row in the store. Logout deletes the row; a password change or disabling the user deletes
  all the user's rows; a session also ends ``web.session_idle_minutes`` after its last page or form
  (polling requests under ``/api/`` do not count) and ``web.session_max_hours`` after the login. Any copy of
  the cookie stops working with the row.
- Login attempts are limited per user name (``web.login_attempts_per_minute``, from any address) and per
  client address (``web.login_attempts_per_address_per_minute``, for any names) within a minute, checked and
  recorded in one store transaction before the password is looked at; past either limit the answer is HTTP
  429 with ``Retry-After`` and no password check.
- Every login, failed login, refusal and logout goes to the audit table, in the transaction of what it records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from werkzeug.security import check_password_hash, generate_password_hash

from gateway.services import DeskSession, GatewayServices, LoginThrottled, Role, UserRow
from gateway.web.context import services

_logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

HOME_OF_ROLE: dict[str, str] = {
    "nurse": "nurse.desk",
    "technician": "technician.desk",
    "it": "status.page",
    "admin": "status.page",
}

P = ParamSpec("P")
R = TypeVar("R")


def hash_password(password: str) -> str:
    """The stored form of a password (werkzeug's scrypt with a random salt)."""
    return generate_password_hash(password)


class WebUser(UserMixin):  # type: ignore[misc]
    """The logged-in user as flask-login sees it: the user and the token of their server-side session."""

    def __init__(self, row: UserRow, token: str) -> None:
        self.username = row.username
        self.role: Role = row.role
        self.language = row.language
        self._token = token

    def get_id(self) -> str:
        return self._token

    def has_role(self, *roles: str) -> bool:
        """True for any of ``roles``; admin may do everything."""
        return self.role == "admin" or self.role in roles


def load_user(token: str) -> WebUser | None:
    """flask-login's loader: the user of a live session (not logged out, timed out, disabled or re-passworded)."""
    # A page polling for progress must not keep its session alive: only pages and forms count as use.
    found = services().desk_session(token, touch="/api/" not in request.path)
    if found is None:
        return None
    row, _session = found
    return WebUser(row, token)


def _unauthorized() -> ResponseReturnValue:
    if "/api/" in request.path:
        return {"error": "login required"}, 401
    return redirect(url_for("auth.login", next=request.full_path if request.query_string else request.path))


def init_login(app: Any) -> None:
    """Attach flask-login to ``app``."""
    manager = LoginManager()
    manager.session_protection = "basic"
    manager.user_loader(load_user)
    manager.unauthorized_handler(_unauthorized)
    manager.init_app(app)


def roles_required(*roles: str) -> Callable[[Callable[P, R]], Callable[P, R | ResponseReturnValue]]:
    """Allow a view to logged-in users of ``roles`` (and admins); others get the login page or 403."""

    def decorate(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
        @wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
            if not current_user.is_authenticated:
                return cast(ResponseReturnValue, current_app.login_manager.unauthorized())  # type: ignore[attr-defined]
            if not current_user.has_role(*roles):
                services().audit(
                    actor=current_user.username, action="access_refused", target_kind="page", target_id=request.path
                )
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorate


def desk_record(row: DeskSession | None, *, kind: str, target_id: str) -> DeskSession:
    """A desk session or request of ``kind`` (``meter`` for the nurse, ``retina`` for the technician).

    Missing: 404. Of another desk's kind: also 404 (a nurse has no business knowing that a photo session of
    that id exists, let alone whose it is), audited and logged, because asking for one is not an accident.
    """
    if row is None:
        abort(404)
    if row.kind != kind:
        services().audit(
            actor=current_user.username,
            action="access_refused",
            target_kind="session",
            target_id=target_id,
            detail={"path": request.path, "kind": str(row.kind), "desk": kind},
        )
        _logger.warning("user %s asked the %s desk for a %s session (%s)", current_user.username, kind,
                        row.kind, target_id)  # fmt: skip
        abort(404)
    return row


def safe_next(target: str | None, default: str) -> str:
    """A local path to go to after login or a language switch (never another site)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def home_url() -> str:
    """The start page of the logged-in user's role."""
    return url_for(HOME_OF_ROLE.get(current_user.role, "status.page"))


def _loggable(svc: GatewayServices, username: str) -> str:
    """A typed user name for the log, only when it names a real user: a patient id scanned into the
    wrong field must not end up in the log."""
    return f"user {username}" if svc.user(username) else "an unknown user name"


@bp.get("/")
def index() -> ResponseReturnValue:
    """The start page of the user's role, or the login page."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return redirect(home_url())


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Log in with user name and password (attempts limited per user name and per client address)."""
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""))
    svc = services()
    username = request.form.get("username", "").strip()[:64]
    password = request.form.get("password", "")
    address = request.remote_addr or "-"
    try:
        attempt = svc.begin_login(username, address)  # checked and recorded before any password check
    except LoginThrottled as exc:
        _logger.warning("login rate limit (per %s) hit for %s from %s", exc.scope, _loggable(svc, username), address)
        page = render_template("login.html", next="", error=_("Too many attempts. Wait a minute and try again."))
        response = make_response(page, 429)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    row = svc.user(username)
    # Check a hash even for unknown users so the answer time does not tell which names exist.
    ok = check_password_hash(row.password_hash if row else current_app.config["CG_DUMMY_HASH"], password)
    if row is None or row.disabled or not ok:
        svc.login_failed(attempt)
        _logger.info("failed login for %s from %s", _loggable(svc, username), address)
        return render_template(
            "login.html", next=request.form.get("next", ""), error=_("Wrong user name or password.")
        ), 401
    user = WebUser(row, svc.login_succeeded(attempt))
    login_user(user)
    _logger.info("user %s logged in (%s)", user.username, user.role)
    return redirect(safe_next(request.form.get("next"), home_url()))


@bp.post("/logout")
def logout() -> Response | ResponseReturnValue:
    """End the session: its row goes, so every copy of the cookie is logged out too."""
    if current_user.is_authenticated:
        services().logout(current_user.get_id(), actor=current_user.username)
        logout_user()
    flash(_("You are logged out."))
    return redirect(url_for("auth.login"))
