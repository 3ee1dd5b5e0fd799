"""Local users of the pages (nurse, technician, IT, admin). Login attempts and sessions: :mod:`.logins`.

Passwords are stored only as hashes made by the caller (``werkzeug.security``); this module never sees a
plain password. User names are not patient data and may be logged; nothing here stores patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from gateway.errors import GatewayError
from gateway.store.db import Store, iso
from gateway.store.logins import end_user_sessions

Role = Literal["nurse", "technician", "it", "admin"]
ROLES: Final[tuple[Role, ...]] = ("nurse", "technician", "it", "admin")


class UserError(GatewayError):
    """A user operation cannot be done (unknown user, duplicate name, bad role)."""


@dataclass(frozen=True, slots=True)
class UserRow:
    """One local user as stored (the hash, never a password)."""

    username: str
    password_hash: str
    role: Role
    language: str | None
    created_at: str
    disabled: bool


def _row(row: dict[str, Any]) -> UserRow:
    return UserRow(
        username=row["username"],
        password_hash=row["password_hash"],
        role=cast(Role, row["role"]),
        language=row["language"],
        created_at=row["created_at"],
        disabled=bool(row["disabled"]),
    )


def add_user(store: Store, username: str, password_hash: str, role: str, *, language: str | None = None) -> None:
    """Create a user; UserError when the name is taken or the role unknown."""
    if role not in ROLES:
        raise UserError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if not username or len(username) > 64 or not username.isprintable() or username.strip() != username:
        raise UserError("a user name is 1 to 64 printable characters without surrounding spaces")
    with store.transaction() as db:
        if db.execute("SELECT 1 FROM users WHERE username = ?", [username]).fetchone():
            raise UserError(f"user {username!r} already exists")
        db.execute(
            "INSERT INTO users (username, password_hash, role, language, created_at, disabled) "
            "VALUES (?, ?, ?, ?, ?, 0)",
            [username, password_hash, role, language, iso(store.clock.utc_now())],
        )


def get_user(store: Store, username: str) -> UserRow | None:
    """The user called ``username`` (disabled ones included), or None."""
    rows = store.query("SELECT * FROM users WHERE username = ?", [username])
    return _row(rows[0]) if rows else None


def list_users(store: Store) -> list[UserRow]:
    """Every user, by name."""
    return [_row(r) for r in store.query("SELECT * FROM users ORDER BY username")]


def _update(store: Store, username: str, column: str, value: Any, *, end_sessions: bool = False) -> None:
    with store.transaction() as db:
        cur = db.execute(f"UPDATE users SET {column} = ? WHERE username = ?", [value, username])
        if cur.rowcount == 0:
            raise UserError(f"no user {username!r}")
        if end_sessions:  # in the same transaction: no request sees the change without the logout
            end_user_sessions(db, username)


def set_disabled(store: Store, username: str, disabled: bool = True) -> None:
    """Disable (or re-enable) a user; disabling ends every session of the user at once."""
    _update(store, username, "disabled", int(disabled), end_sessions=disabled)


def set_password_hash(store: Store, username: str, password_hash: str) -> None:
    """Replace a user's password hash and end every session of the user."""
    _update(store, username, "password_hash", password_hash, end_sessions=True)


def set_language(store: Store, username: str, language: str | None) -> None:
    """Remember the user's page language (``en``, ``zh``), or None to follow the browser."""
    _update(store, username, "language", language)
