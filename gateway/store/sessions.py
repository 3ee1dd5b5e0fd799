"""Desk sessions: one meter download or one retinal capture series, for one patient."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from gateway.store.db import Store, columns, iso, new_id

SessionKind = Literal["meter", "retina"]
SessionState = Literal["running", "done", "interrupted", "failed"]
"""What a stored session's ``state`` holds: ``running`` from its start, then the final state its writer gives it
(the desk's states as text; queued and connecting live only in the core's progress, never in the store)."""


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A stored desk session (one meter download or one retinal capture series) as the pages and the CLI read
    it. Times are UTC ISO text as stored; ``error`` is ``"Type: message"`` text."""

    session_id: str
    kind: SessionKind
    patient_id: str | None
    meter_id: str | None
    operator: str | None
    state: SessionState
    started_at: str
    ended_at: str | None
    records_total: int | None
    """How many records the meter said it holds (None until it said)."""
    records_new: int
    error: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SessionRow:
        """A row of :data:`_COLUMNS`."""
        return cls(
            session_id=row["session_id"],
            # the table's CHECK holds ``kind`` to the two kinds; only the writers of this module and
            # gateway.store.downloads set ``state``, each to one of SessionState's
            kind=cast(SessionKind, row["kind"]),
            patient_id=row["patient_id"],
            meter_id=row["meter_id"],
            operator=row["operator"],
            state=cast(SessionState, row["state"]),
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            records_total=row["records_total"],
            records_new=row["records_new"],
            error=row["error"],
        )


_COLUMNS = columns(SessionRow)


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


def get_session(store: Store, session_id: str) -> SessionRow | None:
    """The stored session ``session_id``, or None."""
    rows = store.query(f"SELECT {_COLUMNS} FROM sessions WHERE session_id = ?", [session_id])
    return SessionRow.from_row(rows[0]) if rows else None


def sessions_since(store: Store, since_iso: str, kind: SessionKind | None = None) -> list[SessionRow]:
    """Sessions started at or after ``since_iso``, newest first."""
    sql = f"SELECT {_COLUMNS} FROM sessions WHERE started_at >= ?"
    params = [since_iso]
    if kind is not None:
        sql += " AND kind = ?"
        params.append(kind)
    rows = store.query(sql + " ORDER BY started_at DESC", params)
    return [SessionRow.from_row(row) for row in rows]
