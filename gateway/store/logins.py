"""Login attempts (the rate limit) and server-side desk sessions, both in the store so a restart keeps them.

**Rate limit.** :func:`reserve_attempt` checks and records one login attempt in ONE write transaction: it
inserts the attempt for the typed user name and for the client address first (so the transaction holds
SQLite's write lock from its first statement, in this process and against any other), then counts both
within the window, and takes the attempt back if either count is over its limit. Concurrent attempts
therefore cannot all pass a check that none of them has recorded yet. An attempt counts until it turns out
to be a good login (:func:`login_succeeded` removes it, with the user's earlier failures); refused attempts
are not recorded, so a client that keeps guessing gets exactly ``limit`` password checks per window.
User names are kept as a digest: a patient id scanned into the wrong field must not be stored here.

**Sessions.** A login creates a row keyed by the SHA-256 of a random token; the browser's (signed) cookie
carries the token. A request is logged in only while that row exists, is younger than the absolute limit
and was used within the idle limit. Logout deletes the row; a password change or disabling the user
(:mod:`gateway.store.users`) deletes all the user's rows in the same transaction. So no copy of a cookie,
taken before, opens anything afterwards.

Audit rows for these events are written in the same transaction as what they record.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlite_utils import Database

from gateway.errors import GatewayError
from gateway.store import audit
from gateway.store.db import Store, columns, iso

Scope = Literal["user", "address"]
TOUCH_EVERY = timedelta(seconds=60)
"""A session's last use is written at most once a minute (the idle limit counts in minutes)."""
KEEP_ATTEMPTS = timedelta(days=1)


class LoginThrottled(GatewayError):
    """Too many login attempts for this user name or from this address within the window."""

    def __init__(self, scope: Scope, retry_after_s: int) -> None:
        super().__init__(f"too many login attempts for this {scope}; retry in {retry_after_s} s")
        self.scope: Scope = scope
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Attempts allowed per user name and per client address within ``window``."""

    per_user: int
    per_address: int
    window: timedelta = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """One recorded attempt, to be resolved by :func:`login_succeeded` or :func:`login_failed`."""

    username: str
    address: str
    row_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SessionTimeouts:
    """How long a desk session lives: since its last use, and at most since the login."""

    idle: timedelta
    absolute: timedelta


@dataclass(frozen=True, slots=True)
class WebSession:
    """A live desk session (the token itself is never stored)."""

    username: str
    created_at: str
    last_seen_at: str


def user_key(username: str) -> str:
    """The per-user counter's key: a digest of the typed name (case-folded), never the name itself."""
    return hashlib.sha256(username.casefold().encode("utf-8", "replace")).hexdigest()[:32]


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def reserve_attempt(store: Store, *, username: str, address: str, limits: LoginLimits) -> LoginAttempt:
    """Check and record one login attempt atomically.

    Raises:
        LoginThrottled: the user name or the address has used up its attempts in the window; nothing is
            recorded but the ``login_rate_limited`` audit row.
    """
    now = store.clock.utc_now()
    since = iso(now - limits.window)
    keys: tuple[tuple[Scope, str, int], ...] = (
        ("user", user_key(username), limits.per_user),
        ("address", address, limits.per_address),
    )
    throttled: LoginThrottled | None = None
    with store.transaction(durable=False) as db:
        row_ids = tuple(
            int(db.execute("INSERT INTO web_login_attempts (scope, key, at) VALUES (?, ?, ?)",
                           [scope, key, iso(now)]).lastrowid or 0)
            for scope, key, _limit in keys
        )  # fmt: skip
        for scope, key, limit in keys:
            count, oldest = db.execute(
                "SELECT count(*), min(at) FROM web_login_attempts WHERE scope = ? AND key = ? AND at >= ?",
                [scope, key, since],
            ).fetchone()
            if count > limit:  # our own row included: ``limit`` attempts were there before this one
                _delete(db, row_ids)
                audit.record(db, store, actor=username or "-", action="login_rate_limited",
                             detail={"ip": address, "scope": scope})  # fmt: skip
                waited = (now - datetime.fromisoformat(oldest)).total_seconds()
                throttled = LoginThrottled(scope, max(1, int(limits.window.total_seconds() - waited) + 1))
                break
    if throttled is not None:  # raised after the commit, which keeps the audit row
        raise throttled
    return LoginAttempt(username=username, address=address, row_ids=row_ids)


def _delete(db: Database, row_ids: tuple[int, ...]) -> None:
    db.execute(f"DELETE FROM web_login_attempts WHERE id IN ({', '.join('?' * len(row_ids))})", list(row_ids))


def login_failed(store: Store, attempt: LoginAttempt) -> None:
    """The attempt was a wrong name or password: it keeps counting; audited; day-old attempts are pruned."""
    now = store.clock.utc_now()
    with store.transaction(durable=False) as db:
        audit.record(db, store, actor=attempt.username or "-", action="login_failed", detail={"ip": attempt.address})
        db.execute("DELETE FROM web_login_attempts WHERE at < ?", [iso(now - KEEP_ATTEMPTS)])


def login_succeeded(store: Store, attempt: LoginAttempt) -> str:
    """The attempt was good: forget it and the user's earlier failures, open a session; return its token.

    Failures counted against the address stay: logging in with one known account must not reset the
    counter that limits guessing at others from the same machine.
    """
    token = secrets.token_urlsafe(32)
    now = iso(store.clock.utc_now())
    with store.transaction() as db:
        _delete(db, attempt.row_ids)
        db.execute("DELETE FROM web_login_attempts WHERE scope = 'user' AND key = ?", [user_key(attempt.username)])
        db.execute(
            "INSERT INTO web_sessions (token_sha256, username, created_at, last_seen_at, address) "
            "VALUES (?, ?, ?, ?, ?)",
            [_token_key(token), attempt.username, now, now, attempt.address],
        )
        audit.record(db, store, actor=attempt.username, action="login", detail={"ip": attempt.address})
    return token


def live_session(store: Store, token: str, timeouts: SessionTimeouts, *, touch: bool = True) -> WebSession | None:
    """The session ``token`` opens, or None (unknown, logged out, idle too long or too old; expired rows go).

    With ``touch``, the session's last use becomes now (written at most once a minute); automatic requests
    (a page polling for progress) pass ``touch=False`` so that a page left open still times out.
    """
    key = _token_key(token)
    rows = store.query("SELECT username, created_at, last_seen_at FROM web_sessions WHERE token_sha256 = ?", [key])
    if not rows:
        return None
    row = rows[0]
    now = store.clock.utc_now()
    last_seen = datetime.fromisoformat(row["last_seen_at"])
    if now - datetime.fromisoformat(row["created_at"]) >= timeouts.absolute or now - last_seen >= timeouts.idle:
        with store.transaction(durable=False) as db:
            db.execute("DELETE FROM web_sessions WHERE token_sha256 = ?", [key])
        return None
    if touch and now - last_seen >= TOUCH_EVERY:
        with store.transaction(durable=False) as db:
            db.execute("UPDATE web_sessions SET last_seen_at = ? WHERE token_sha256 = ?", [iso(now), key])
        row["last_seen_at"] = iso(now)
    return WebSession(username=row["username"], created_at=row["created_at"], last_seen_at=row["last_seen_at"])


def end_session(store: Store, token: str, *, actor: str) -> bool:
    """Log out: delete the session (every copy of its cookie stops working); audited. False if it was gone."""
    with store.transaction() as db:
        gone = db.execute("DELETE FROM web_sessions WHERE token_sha256 = ?", [_token_key(token)]).rowcount
        if gone:
            audit.record(db, store, actor=actor, action="logout")
    return bool(gone)


def end_user_sessions(db: Database, username: str) -> int:
    """Delete every session of ``username`` inside the caller's transaction; how many there were."""
    return int(db.execute("DELETE FROM web_sessions WHERE username = ?", [username]).rowcount)


def prune_sessions(store: Store, timeouts: SessionTimeouts) -> int:
    """Delete sessions past either limit (housekeeping; they would be refused anyway)."""
    now = store.clock.utc_now()
    with store.transaction(durable=False) as db:
        cur = db.execute(
            "DELETE FROM web_sessions WHERE created_at < ? OR last_seen_at < ?",
            [iso(now - timeouts.absolute), iso(now - timeouts.idle)],
        )
        return int(cur.rowcount)


def session_count(store: Store, username: str | None = None) -> int:
    """Open session rows (of one user, or all)."""
    if username is None:
        return int(store.scalar("SELECT count(*) FROM web_sessions"))
    return int(store.scalar("SELECT count(*) FROM web_sessions WHERE username = ?", [username]))


@dataclass(frozen=True, slots=True)
class RecordedAttempt:
    """One row of the login throttle: a digest of the user name or the client's address, and when."""

    scope: Scope
    key: str
    at: str


def attempts(store: Store) -> list[RecordedAttempt]:
    """Recorded attempts, oldest first (for tests and troubleshooting; keys are digests and addresses)."""
    rows = store.query(f"SELECT {columns(RecordedAttempt)} FROM web_login_attempts ORDER BY id")
    return [RecordedAttempt(**row) for row in rows]
