"""Blood pressure readings from cuffs. A reading and its outbox message are written in one transaction.

Identity (UNIQUE, as for glucose readings; a second download of the same cuff adds nothing):

- ``(cuff, user, sequence)`` for cuffs that number their stored records (BLS 1.1 Blood Pressure Record);
- ``(cuff, user, cuff time, values)`` for cuffs that only resend their measurements (BLS 1.0);
- a cuff that sends no time stamp has no stable identity: such a reading is keyed by the gateway's time of
  the download, so a cuff that sends it again adds it again (docs/meters-ble.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.records import BloodPressureReading, CuffStatus, PressureUnit
from gateway.store.db import Store, columns, iso
from gateway.store.readings import AddResult, RecordTable, insert_records
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


def _columns(reading: BloodPressureReading) -> dict[str, Any]:
    return {
        "identity": bp_identity(reading),
        "meter_id": reading.meter_id,
        "sequence": reading.sequence,
        "cuff_user": reading.user_id,
        "meter_time": None if reading.meter_time is None else reading.meter_time.isoformat(),
        "clock_offset_s": reading.clock_offset_s,
        "corrected_time": iso(reading.corrected_time),
        "time_trusted": int(reading.time_trusted),
        "systolic": reading.systolic,
        "diastolic": reading.diastolic,
        "mean_arterial": reading.mean_arterial,
        "unit": str(reading.unit),
        "systolic_mmhg": reading.systolic_mmhg,
        "diastolic_mmhg": reading.diastolic_mmhg,
        "mean_arterial_mmhg": reading.mean_arterial_mmhg,
        "pulse_bpm": reading.pulse_bpm,
        "status": json.dumps([str(s) for s in reading.status]),
        "patient_id": reading.patient_id,
        "session_id": reading.session_id,
        "flags": json.dumps(list(reading.flags)),
    }


BLOOD_PRESSURE: RecordTable[BloodPressureReading] = RecordTable(
    table="blood_pressure",
    kind=KIND,
    topic=contract.TOPIC_BLOOD_PRESSURE,
    columns=_columns,
    payload=contract.blood_pressure_payload,
)


def add_blood_pressure(store: Store, readings: Sequence[BloodPressureReading]) -> AddResult:
    """Store readings not seen before, each with its ``blood_pressure`` outbox message, in ONE durable
    transaction (duplicates counted, nothing added for them). Raises IntakeRefused when the disk is nearly full."""
    if not readings:
        return AddResult()
    store.check_intake()
    with store.transaction(durable=True) as db:
        return insert_records(db, store, readings, BLOOD_PRESSURE)


def last_sequence(store: Store, meter_id: str) -> int | None:
    """Highest record sequence stored for this cuff: the resume cursor of the next download."""
    value = store.scalar("SELECT max(sequence) FROM blood_pressure WHERE meter_id = ?", [meter_id])
    return None if value is None else int(value)


def cuff_users(store: Store, meter_id: str) -> frozenset[int]:
    """The users a cuff has named in the measurements stored from it (none: a cuff without users, or new)."""
    rows = store.query(
        "SELECT DISTINCT cuff_user FROM blood_pressure WHERE meter_id = ? AND cuff_user IS NOT NULL", [meter_id]
    )
    return frozenset(int(row["cuff_user"]) for row in rows)


def count_blood_pressure(store: Store, meter_id: str | None = None) -> int:
    """Number of stored blood pressure readings (optionally of one cuff)."""
    if meter_id is None:
        return int(store.scalar("SELECT count(*) FROM blood_pressure"))
    return int(store.scalar("SELECT count(*) FROM blood_pressure WHERE meter_id = ?", [meter_id]))


@dataclass(frozen=True, slots=True)
class BloodPressureReadingRow:
    """A stored blood pressure reading as the nurse's desk reads it (patient data: behind login): when (UTC ISO
    text, and whether the cuff's clock could be trusted), the values in mmHg and as the cuff reported them, the
    pulse, which cuff and cuff user, and what the cuff said of the measurement."""

    corrected_time: str
    time_trusted: bool
    systolic_mmhg: float
    diastolic_mmhg: float
    mean_arterial_mmhg: float | None
    systolic: float
    diastolic: float
    unit: PressureUnit
    pulse_bpm: float | None
    cuff_user: int | None
    meter_id: str
    status: tuple[CuffStatus, ...]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BloodPressureReadingRow:
        """A row of :data:`_ROW_COLUMNS` (``status`` is stored as a JSON list of names)."""
        return cls(
            corrected_time=row["corrected_time"],
            time_trusted=bool(row["time_trusted"]),
            systolic_mmhg=row["systolic_mmhg"],
            diastolic_mmhg=row["diastolic_mmhg"],
            mean_arterial_mmhg=row["mean_arterial_mmhg"],
            systolic=row["systolic"],
            diastolic=row["diastolic"],
            unit=PressureUnit(row["unit"]),
            pulse_bpm=row["pulse_bpm"],
            cuff_user=row["cuff_user"],
            meter_id=row["meter_id"],
            status=tuple(CuffStatus(name) for name in json.loads(row["status"])),
        )


_ROW_COLUMNS = columns(BloodPressureReadingRow)


def of_sessions(
    store: Store, session_ids: Sequence[str], *, patient_id: str | None = None, limit: int = 200
) -> list[BloodPressureReadingRow]:
    """The blood pressure readings desk sessions stored (only ``patient_id``'s when given: a multi-user cuff's
    other users are not the patient), newest first; a visit's readings are a handful."""
    if not session_ids:
        return []
    marks = ", ".join("?" * len(session_ids))
    sql = f"SELECT {_ROW_COLUMNS} FROM blood_pressure WHERE session_id IN ({marks})"
    params: list[Any] = [*session_ids]
    if patient_id is not None:
        sql += " AND patient_id = ?"
        params.append(patient_id)
    rows = store.query(sql + " ORDER BY corrected_time DESC, id DESC LIMIT ?", [*params, limit])
    return [BloodPressureReadingRow.from_row(row) for row in rows]
