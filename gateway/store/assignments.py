"""Readings downloaded without a patient (auto-sync before any patient was set), and their assignment at the desk.

Such readings are forwarded at once with ``patient_id`` null (the store-and-forward rule: nothing waits on a
person). Assigning them is one transaction: the readings (and their sessions) get the patient, an audit row
says who did it and when, and a ``cg.assignment/1`` correction (one per 1,000 readings) is queued so that the
platform, which already holds each reading once, files it under the patient. A reading is assigned once: only
readings still without a patient are touched, so a second click or a stale page assigns nothing and sends
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store import audit
from gateway.store.db import Store, new_id
from gateway.store.outbox import enqueue
from gateway.wire import contract


@dataclass(frozen=True, slots=True)
class UnassignedGroup:
    """A meter's readings without a patient: how many, over which time, up to which stored row."""

    meter_id: str
    count: int
    first_time: str
    """Corrected UTC time (ISO) of the oldest."""
    last_time: str
    downloads: int
    """Downloads (sessions) they came in."""
    through: int
    """The newest such reading's row id: an assignment made from this view takes no reading stored later."""


@dataclass(frozen=True, slots=True)
class AssignResult:
    """What one assignment did: ``count`` readings given to the patient, ``messages`` corrections queued."""

    assignment_id: str | None
    count: int
    messages: int


def unassigned(store: Store, meter_id: str | None = None) -> list[UnassignedGroup]:
    """Readings without a patient, one group per meter (newest first); only ``meter_id``'s when given."""
    where, params = ("AND meter_id = ?", [meter_id]) if meter_id else ("", [])
    rows = store.query(
        "SELECT meter_id, count(*) AS n, min(corrected_time) AS first_time, max(corrected_time) AS last_time, "
        "count(DISTINCT session_id) AS downloads, max(id) AS through FROM readings "
        f"WHERE patient_id IS NULL {where} GROUP BY meter_id ORDER BY max(id) DESC",
        params,
    )
    return [
        UnassignedGroup(
            meter_id=str(r["meter_id"]),
            count=int(r["n"]),
            first_time=str(r["first_time"]),
            last_time=str(r["last_time"]),
            downloads=int(r["downloads"]),
            through=int(r["through"]),
        )
        for r in rows
    ]


def assign(store: Store, meter_id: str, patient_id: str, *, through: int, actor: str) -> AssignResult:
    """Give ``meter_id``'s readings without a patient (stored up to row ``through``) to ``patient_id``, in ONE
    durable transaction with the audit row and the ``cg.assignment/1`` corrections. Readings that already have
    a patient are never changed (nothing is assigned or sent twice)."""
    store.check_intake()
    assignment_id = new_id()
    now = store.clock.utc_now()
    origin = store.origin
    with store.transaction(durable=True) as db:
        rows = db.execute(
            "SELECT reading_id, session_id FROM readings WHERE meter_id = ? AND patient_id IS NULL AND id <= ? "
            "ORDER BY id",
            [meter_id, through],
        ).fetchall()
        if not rows:
            return AssignResult(None, 0, 0)
        reading_ids = [str(r[0]) for r in rows]
        sessions = sorted({str(r[1]) for r in rows if r[1] is not None})
        db.execute(
            "UPDATE readings SET patient_id = ? WHERE meter_id = ? AND patient_id IS NULL AND id <= ?",
            [patient_id, meter_id, through],
        )
        # The downloads they came in now name the patient too ("Today's downloads" shows it).
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
                kind="assignment",
                topic=contract.TOPIC_ASSIGNMENT,
                created_at=now,
                message_id=message_id,
                payload=contract.assignment_payload(
                    message_id=message_id,
                    site_id=origin.site_id,
                    gateway_id=origin.gateway_id,
                    created_at=now,
                    assignment_id=assignment_id,
                    patient_id=patient_id,
                    meter_id=meter_id,
                    reading_ids=reading_ids[start : start + step],
                ),
            )
            messages += 1
        audit.record(
            db,
            store,
            actor=actor,
            action="assign_readings",
            target_kind="meter",
            target_id=meter_id,
            patient_id=patient_id,
            detail={"assignment_id": assignment_id, "readings": len(reading_ids)},
        )
    return AssignResult(assignment_id, len(reading_ids), messages)
