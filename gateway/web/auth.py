"""Login, logout and roles for the pages.

- Users live in the store's ``users`` table (``gateway user add``); passwords are hashed with
  ``werkzeug.security`` (scrypt). A disabled user, or one whose password changed, loses every session:
  the session id carries a digest of the password hash and the loader checks it on each request.
- Failed logins are counted per client address + user name in the store; at
  ``web.login_attempts_per_minute`` failures within a minute further attempts get HTTP 429 without the
  password being checked, until the minute has passed.
- Every login, failed login, refusal and logout goes to the audit table.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from werkzeug.security import check_password_hash, generate_password_hash

from gateway.store import Store, audit
from gateway.store import users as store_users
from gateway.store.users import Role, UserRow
from gateway.web.context import services, web_context

_logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

RATE_WINDOW = timedelta(minutes=1)
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


def _hash_digest(password_hash: str) -> str:
    # Put a digest, not the hash itself, into the (signed, not encrypted) session cookie.
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


class WebUser(UserMixin):  # type: ignore[misc]
    """The logged-in user as flask-login sees it."""

    def __init__(self, row: UserRow) -> None:
        self.username = row.username
        self.role: Role = row.role
        self.language = row.language
        self._digest = _hash_digest(row.password_hash)

    def get_id(self) -> str:
        return f"{self.username}\x1f{self._digest}"

    def has_role(self, *roles: str) -> bool:
        """True for any of ``roles``; admin may do everything."""
        return self.role == "admin" or self.role in roles


def load_user(user_id: str) -> WebUser | None:
    """flask-login's loader: the user, unless disabled, deleted or re-passworded since the login."""
    username, _sep, digest = user_id.partition("\x1f")
    row = store_users.get_user(services().store, username)
    if row is None or row.disabled or _hash_digest(row.password_hash) != digest:
        return None
    return WebUser(row)


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
                audit.add(
                    services().store,
                    actor=current_user.username,
                    action="access_refused",
                    target_kind="page",
                    target_id=request.path,
                )
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorate


def desk_record(row: dict[str, Any] | None, *, kind: str, target_id: str) -> dict[str, Any]:
    """A desk session or request of ``kind`` (``meter`` for the nurse, ``retina`` for the technician).

    Missing: 404. Of another desk's kind: also 404 (a nurse has no business knowing that a photo session of
    that id exists, let alone whose it is), audited and logged, because asking for one is not an accident.
    """
    if row is None:
        abort(404)
    if row.get("kind") != kind:
        audit.add(
            services().store,
            actor=current_user.username,
            action="access_refused",
            target_kind="session",
            target_id=target_id,
            detail={"path": request.path, "kind": row.get("kind"), "desk": kind},
        )
        _logger.warning("user %s asked the %s desk for a %s session (%s)", current_user.username, kind,
                        row.get("kind"), target_id)  # fmt: skip
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


def _loggable(store: Store, username: str) -> str:
    """A typed user name for the log, only when it names a real user: a patient id scanned into the
    wrong field must not end up in the log."""
    return f"user {username}" if username and store_users.get_user(store, username) else "an unknown user name"


@bp.get("/")
def index() -> ResponseReturnValue:
    """The start page of the user's role, or the login page."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return redirect(home_url())


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Log in with user name and password (rate limited per client address and user name)."""
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""))
    context = web_context()
    store = context.services.store
    username = request.form.get("username", "").strip()[:64]
    password = request.form.get("password", "")
    key = f"{request.remote_addr}|{username}"
    now = store.clock.utc_now()
    limit = context.config.web.login_attempts_per_minute
    if store_users.login_failures_since(store, key, now - RATE_WINDOW) >= limit:
        audit.add(store, actor=username or "-", action="login_rate_limited", detail={"ip": request.remote_addr})
        _logger.warning("login rate limit hit for %s from %s", _loggable(store, username), request.remote_addr)
        return render_template("login.html", next="", error=_("Too many attempts. Wait a minute and try again.")), 429
    row = store_users.get_user(store, username) if username else None
    # Check a hash even for unknown users so the answer time does not tell which names exist.
    ok = check_password_hash(row.password_hash if row else current_app.config["CG_DUMMY_HASH"], password)
    if row is None or row.disabled or not ok:
        store_users.record_login_failure(store, key)
        store_users.clear_login_failures(store, before=now - timedelta(days=1))
        audit.add(store, actor=username or "-", action="login_failed", detail={"ip": request.remote_addr})
        _logger.info("failed login for %s from %s", _loggable(store, username), request.remote_addr)
        return render_template(
            "login.html", next=request.form.get("next", ""), error=_("Wrong user name or password.")
        ), 401
    store_users.clear_login_failures(store, key)
    user = WebUser(row)
    login_user(user)
    audit.add(store, actor=user.username, action="login", detail={"ip": request.remote_addr})
    _logger.info("user %s logged in (%s)", user.username, user.role)
    return redirect(safe_next(request.form.get("next"), home_url()))


@bp.post("/logout")
def logout() -> Response | ResponseReturnValue:
    """End the session."""
    if current_user.is_authenticated:
        audit.add(services().store, actor=current_user.username, action="logout")
        logout_user()
    flash(_("You are logged out."))
    return redirect(url_for("auth.login"))
