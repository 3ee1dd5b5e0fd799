"""Readings downloaded without a patient, and their assignment at the desk.

Two ways a reading is stored without a patient: a meter or cuff downloaded before any patient was set
(auto-sync), and a multi-user cuff's other users (the nurse chose which cuff user is the patient; the others'
measurements are kept without one). Such readings are forwarded at once with ``patient_id`` null (the
store-and-forward rule: nothing waits on a person). Assigning them is one transaction: the readings (and their
sessions, when those had no patient) get the patient, an audit row says who did it and when, and a
``cg.assignment/1`` correction (one per 1,000 readings; on the topic of the readings' kind) is queued so that the
platform, which already holds each reading once, files it under the patient. A reading is assigned once: only
readings still without a patient are touched, so a second click or a stale page assigns nothing and sends
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.store import audit
from gateway.store.db import Store, new_id
from gateway.store.outbox import enqueue
from gateway.wire import contract


class ReadingKind(StrEnum):
    """Which readings a group holds (and so which table, topic and outbox kind its assignment uses)."""

    GLUCOSE = "glucose"
    BLOOD_PRESSURE = "blood_pressure"


@dataclass(frozen=True, slots=True)
class _Assignable:
    table: str
    topic: str
    kind: str
    """The outbox kind of the correction."""
    per_cuff_user: bool
    """Grouped by the cuff's user too: one user's measurements are one person's."""


_TABLES = {
    ReadingKind.GLUCOSE: _Assignable("readings", contract.TOPIC_ASSIGNMENT, "assignment", per_cuff_user=False),
    ReadingKind.BLOOD_PRESSURE: _Assignable(
        "blood_pressure", contract.TOPIC_BLOOD_PRESSURE_ASSIGNMENT, "blood_pressure_assignment", per_cuff_user=True
    ),
}


@dataclass(frozen=True, slots=True)
class UnassignedGroup:
    """Readings without a patient of one meter (of one user of a cuff): how many, over which time, up to which
    stored row."""

    meter_id: str
    count: int
    first_time: str
    """Corrected UTC time (ISO) of the oldest."""
    last_time: str
    downloads: int
    """Downloads (sessions) they came in."""
    through: int
    """The newest such reading's row id: an assignment made from this view takes no reading stored later."""
    record: ReadingKind = ReadingKind.GLUCOSE
    cuff_user: int | None = None
    """The cuff's user whose measurements these are (blood pressure; None: a cuff that names no user)."""


@dataclass(frozen=True, slots=True)
class AssignResult:
    """What one assignment did: ``count`` readings given to the patient, ``messages`` corrections queued."""

    assignment_id: str | None
    count: int
    messages: int


def unassigned(store: Store, meter_id: str | None = None) -> list[UnassignedGroup]:
    """Readings without a patient: glucose readings one group per meter, then blood pressure readings one group per
    cuff user; each kind newest first; only ``meter_id``'s when given."""
    groups: list[UnassignedGroup] = []
    where, params = ("AND meter_id = ?", [meter_id]) if meter_id else ("", [])
    for record, table in _TABLES.items():
        user = "cuff_user" if table.per_cuff_user else "NULL"
        rows = store.query(
            f"SELECT meter_id, {user} AS cuff_user, count(*) AS n, min(corrected_time) AS first_time, "
            "max(corrected_time) AS last_time, count(DISTINCT session_id) AS downloads, max(id) AS through "
            f"FROM {table.table} WHERE patient_id IS NULL {where} GROUP BY meter_id, {user} ORDER BY max(id) DESC",
            params,
        )
        groups += [
            UnassignedGroup(
                meter_id=str(r["meter_id"]),
                count=int(r["n"]),
                first_time=str(r["first_time"]),
                last_time=str(r["last_time"]),
                downloads=int(r["downloads"]),
                through=int(r["through"]),
                record=record,
                cuff_user=None if r["cuff_user"] is None else int(r["cuff_user"]),
            )
            for r in rows
        ]
    return groups


def assign(
    store: Store,
    meter_id: str,
    patient_id: str,
    *,
    through: int,
    actor: str,
    record: ReadingKind = ReadingKind.GLUCOSE,
    cuff_user: int | None = None,
) -> AssignResult:
    """Give ``meter_id``'s ``record`` readings without a patient (only ``cuff_user``'s for blood pressure; stored
    up to row ``through``) to ``patient_id``, in ONE durable transaction with the audit row and the
    ``cg.assignment/1`` corrections. Readings that already have a patient are never changed (nothing is assigned
    or sent twice)."""
    store.check_intake()
    table = _TABLES[record]
    assignment_id = new_id()
    now = store.clock.utc_now()
    origin = store.origin
    # IS: a cuff that names no user stores NULL, and NULL = NULL is not true
    mine = f"meter_id = ? AND patient_id IS NULL AND id <= ?{' AND cuff_user IS ?' if table.per_cuff_user else ''}"
    params = [meter_id, through, *([cuff_user] if table.per_cuff_user else [])]
    with store.transaction(durable=True) as db:
        rows = db.execute(
            f"SELECT reading_id, session_id FROM {table.table} WHERE {mine} ORDER BY id", params
        ).fetchall()
        if not rows:
            return AssignResult(None, 0, 0)
        reading_ids = [str(r[0]) for r in rows]
        sessions = sorted({str(r[1]) for r in rows if r[1] is not None})
        db.execute(f"UPDATE {table.table} SET patient_id = ? WHERE {mine}", [patient_id, *params])
        # The downloads they came in now name the patient too ("Today's downloads" shows it); a cuff's download
        # for another user's patient keeps that patient.
        for session_id in sessions:
            db.execute(
                "UPDATE sessions SET patient_id = ? WHERE session_id = ? AND patient_id IS NULL",
                [patient_id, session_id],
            )
        step = contract.ASSIGNMENT_MAX_READINGS
        messages = 0
        for start in range(0, len(reading_ids), step):
            message_id = new_id()
            enqueue(
                db,
                kind=table.kind,
                topic=table.topic,
                created_at=now,
                message_id=message_id,
                payload=contract.assignment_payload(
                    envelope=origin.envelope(message_id, now),
                    assignment_id=assignment_id,
                    patient_id=patient_id,
                    meter_id=meter_id,
                    reading_ids=reading_ids[start : start + step],
                ),
            )
            messages += 1
        detail: dict[str, object] = {"assignment_id": assignment_id, "readings": len(reading_ids), "record": record}
        if table.per_cuff_user:
            detail["cuff_user"] = cuff_user
        audit.record(
            db,
            store,
            actor=actor,
            action="assign_readings",
            target_kind="meter",
            target_id=meter_id,
            patient_id=patient_id,
            detail=detail,
        )
    return AssignResult(assignment_id, len(reading_ids), messages)
