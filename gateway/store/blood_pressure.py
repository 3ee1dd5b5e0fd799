"""Blood pressure readings from cuffs. A reading and its outbox message are written in one transaction.

Identity (UNIQUE, as for glucose readings; a second download of the same cuff adds nothing):

- ``(cuff, user, sequence)`` for cuffs that number their stored records (BLS 1.1 Blood Pressure Record);
- ``(cuff, user, cuff time, values)`` for cuffs that only resend their measurements (BLS 1.0);
- a cuff that sends no time stamp has no stable identity: such a reading is keyed by the gateway's time of
  the download, so a cuff that sends it again adds it again (docs/meters-ble.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlite_utils import Database

from gateway.records import BloodPressureReading
from gateway.store.db import Store, iso, new_id
from gateway.store.outbox import enqueue
from gateway.store.readings import AddResult
from gateway.wire import contract

KIND = "blood_pressure"
"""The outbox kind of a blood pressure message."""


def bp_identity(reading: BloodPressureReading) -> str:
    """The reading's identity (module docstring)."""
    user = "-" if reading.user_id is None else str(reading.user_id)
    head = f"{reading.meter_id}#u={user}"
    if reading.sequence is not None:
        return f"{head}#seq={reading.sequence}"
    when = f"gw:{reading.corrected_time.isoformat()}" if reading.meter_time is None else reading.meter_time.isoformat()
    mean = "-" if reading.mean_arterial is None else f"{reading.mean_arterial:g}"
    return f"{head}#t={when}#bp={reading.systolic:g}/{reading.diastolic:g}/{mean}{reading.unit}"


def add_blood_pressure(store: Store, readings: Sequence[BloodPressureReading]) -> AddResult:
    """Store readings not seen before, each with its ``blood_pressure`` outbox message, in ONE durable
    transaction (duplicates counted, nothing added for them). Raises IntakeRefused when the disk is nearly full."""
    if not readings:
        return AddResult()
    store.check_intake()
    with store.transaction(durable=True) as db:
        return insert_blood_pressure(db, store, readings)


def insert_blood_pressure(db: Database, store: Store, readings: Sequence[BloodPressureReading]) -> AddResult:
    """The inserts of :func:`add_blood_pressure`, inside the caller's transaction (the caller checks intake)."""
    result = AddResult()
    origin = store.origin
    now = store.clock.utc_now()
    for reading in readings:
        reading_id, message_id = new_id(), new_id()
        cur = db.execute(
            "INSERT OR IGNORE INTO blood_pressure (reading_id, identity, meter_id, sequence, cuff_user, meter_time, "
            "clock_offset_s, corrected_time, time_trusted, systolic, diastolic, mean_arterial, unit, systolic_mmhg, "
            "diastolic_mmhg, mean_arterial_mmhg, pulse_bpm, status, patient_id, session_id, flags, stored_at, "
            "message_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                reading_id,
                bp_identity(reading),
                reading.meter_id,
                reading.sequence,
                reading.user_id,
                None if reading.meter_time is None else reading.meter_time.isoformat(),
                reading.clock_offset_s,
                iso(reading.corrected_time),
                int(reading.time_trusted),
                reading.systolic,
                reading.diastolic,
                reading.mean_arterial,
                str(reading.unit),
                reading.systolic_mmhg,
                reading.diastolic_mmhg,
                reading.mean_arterial_mmhg,
                reading.pulse_bpm,
                json.dumps([str(s) for s in reading.status]),
                reading.patient_id,
                reading.session_id,
                json.dumps(list(reading.flags)),
                iso(now),
                message_id,
            ],
        )
        if cur.rowcount == 0:
            result.duplicates += 1
            continue
        enqueue(
            db,
            kind=KIND,
            topic=contract.TOPIC_BLOOD_PRESSURE,
            created_at=now,
            message_id=message_id,  # the reading names its message (blood_pressure.message_id)
            payload=contract.blood_pressure_payload(
                reading,
                reading_id=reading_id,
                message_id=message_id,
                site_id=origin.site_id,
                gateway_id=origin.gateway_id,
                created_at=now,
                payload_format=origin.payload_format,
            ),
        )
        result.added += 1
        result.reading_ids.append(reading_id)
    return result


def last_sequence(store: Store, meter_id: str) -> int | None:
    """Highest record sequence stored for this cuff: the resume cursor of the next download."""
    value = store.scalar("SELECT max(sequence) FROM blood_pressure WHERE meter_id = ?", [meter_id])
    return None if value is None else int(value)


def count_blood_pressure(store: Store, meter_id: str | None = None) -> int:
    """Number of stored blood pressure readings (optionally of one cuff)."""
    if meter_id is None:
        return int(store.scalar("SELECT count(*) FROM blood_pressure"))
    return int(store.scalar("SELECT count(*) FROM blood_pressure WHERE meter_id = ?", [meter_id]))


def of_sessions(
    store: Store, session_ids: Sequence[str], *, patient_id: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The blood pressure readings desk sessions stored (only ``patient_id``'s when given: a multi-user cuff's
    other users are not the patient), newest first; a visit's readings are a handful."""
    if not session_ids:
        return []
    marks = ", ".join("?" * len(session_ids))
    sql = f"SELECT * FROM blood_pressure WHERE session_id IN ({marks})"
    params: list[Any] = [*session_ids]
    if patient_id is not None:
        sql += " AND patient_id = ?"
        params.append(patient_id)
    return store.query(sql + " ORDER BY corrected_time DESC, id DESC LIMIT ?", [*params, limit])
