"""Desk sessions: one meter download or one retinal capture series, for one patient."""

from __future__ import annotations

from typing import Any, Literal

from gateway.store.db import Store, iso, new_id

SessionKind = Literal["meter", "retina"]


def start_session(
    store: Store,
    kind: SessionKind,
    *,
    patient_id: str | None = None,
    meter_id: str | None = None,
    operator: str | None = None,
    session_id: str | None = None,
) -> str:
    """Open a session in state ``running``; return its id."""
    session_id = session_id or new_id()
    with store.transaction(durable=False) as db:
        db.execute(
            "INSERT INTO sessions (session_id, kind, patient_id, meter_id, operator, state, started_at) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?)",
            [session_id, kind, patient_id, meter_id, operator, iso(store.clock.utc_now())],
        )
    return session_id


def record_failed(
    store: Store,
    kind: SessionKind,
    *,
    session_id: str,
    error: str,
    patient_id: str | None = None,
    operator: str | None = None,
) -> None:
    """A desk request that failed before anything started (the meter was not found, did not connect): kept as
    a session ended in state ``failed`` so that the day's list shows it. ``error`` is ``"Type: message"``."""
    now = iso(store.clock.utc_now())
    with store.transaction(durable=False) as db:
        db.execute(
            "INSERT OR IGNORE INTO sessions (session_id, kind, patient_id, operator, state, started_at, ended_at, "
            "error) VALUES (?, ?, ?, ?, 'failed', ?, ?, ?)",
            [session_id, kind, patient_id, operator, now, now, error],
        )


def last_visit_before(store: Store, patient_id: str, before_iso: str) -> str | None:
    """When the patient's latest desk session (meter or retina) before ``before_iso`` started: their last visit."""
    value = store.scalar(
        "SELECT max(started_at) FROM sessions WHERE patient_id = ? AND started_at < ?", [patient_id, before_iso]
    )
    return None if value is None else str(value)


def get_session(store: Store, session_id: str) -> dict[str, Any] | None:
    rows = store.query("SELECT * FROM sessions WHERE session_id = ?", [session_id])
    return rows[0] if rows else None


def sessions_since(store: Store, since_iso: str, kind: SessionKind | None = None) -> list[dict[str, Any]]:
    """Sessions started at or after ``since_iso``, newest first."""
    if kind is None:
        return store.query("SELECT * FROM sessions WHERE started_at >= ? ORDER BY started_at DESC", [since_iso])
    return store.query(
        "SELECT * FROM sessions WHERE started_at >= ? AND kind = ? ORDER BY started_at DESC", [since_iso, kind]
    )
