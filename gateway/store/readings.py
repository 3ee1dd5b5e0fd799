"""Glucose readings and meters. A reading and its outbox message are written in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from sqlite_utils import Database

from gateway.records import ControlResult, GlucoseReading, Meal, MeterInfo, Unit
from gateway.store.db import Store, columns, iso, new_id
from gateway.store.outbox import enqueue
from gateway.wire import contract
from gateway.wire.contract import Envelope, PayloadFormat

R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)


def reading_identity(record: GlucoseReading | ControlResult) -> str:
    """DESIGN §2: ``(meter_id, sequence)`` when the meter numbers records, else ``(meter_id, time, value)``.

    The same for a reading and for a control-solution result: both are records of the meter's memory (the
    resume mark of a newest-first meter may be either).
    """
    if record.sequence is not None:
        return f"{record.meter_id}#seq={record.sequence}"
    return f"{record.meter_id}#t={record.meter_time.isoformat()}#v={record.value:g}{record.unit}"


@dataclass(slots=True)
class AddResult:
    """What :func:`add_readings` did."""

    added: int = 0
    duplicates: int = 0
    reading_ids: list[str] = field(default_factory=list)


class PayloadBuilder(Protocol[R_contra]):
    """A contract builder of a record's message (:func:`gateway.wire.contract.glucose_payload` and its kin)."""

    def __call__(
        self,
        record: R_contra,
        /,
        *,
        reading_id: str,
        envelope: Envelope,
        payload_format: PayloadFormat,
    ) -> bytes: ...


@dataclass(frozen=True, slots=True)
class RecordTable(Generic[R]):
    """How one kind of meter reading is stored and sent: its table, its own columns, its outbox message."""

    table: str
    kind: str
    """The outbox kind (and its topic) of the reading's message."""
    topic: str
    columns: Callable[[R], dict[str, Any]]
    """The reading's own columns; ``reading_id``, ``stored_at`` and ``message_id`` are the store's."""
    payload: PayloadBuilder[R]


def insert_records(db: Database, store: Store, records: Sequence[R], table: RecordTable[R]) -> AddResult:
    """Store readings not seen before, each with its outbox message, inside the caller's transaction (the caller
    checks intake). A reading whose identity (a UNIQUE column) is stored already adds nothing."""
    result = AddResult()
    origin = store.origin
    now = store.clock.utc_now()
    sql = ""
    for record in records:
        reading_id, message_id = new_id(), new_id()
        values = {"reading_id": reading_id, **table.columns(record), "stored_at": iso(now), "message_id": message_id}
        sql = sql or (
            f"INSERT OR IGNORE INTO {table.table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"
        )
        if db.execute(sql, list(values.values())).rowcount == 0:
            result.duplicates += 1
            continue
        enqueue(
            db,
            kind=table.kind,
            topic=table.topic,
            created_at=now,
            message_id=message_id,  # the reading names its message (its message_id column)
            payload=table.payload(
                record,
                reading_id=reading_id,
                envelope=origin.envelope(message_id, now),
                payload_format=origin.payload_format,
            ),
        )
        result.added += 1
        result.reading_ids.append(reading_id)
    return result


def _glucose_columns(reading: GlucoseReading) -> dict[str, Any]:
    return {
        "identity": reading_identity(reading),
        "meter_id": reading.meter_id,
        "sequence": reading.sequence,
        "meter_time": reading.meter_time.isoformat(),
        "clock_offset_s": reading.clock_offset_s,
        "corrected_time": iso(reading.corrected_time),
        "time_trusted": int(reading.time_trusted),
        "value": reading.value,
        "unit": str(reading.unit),
        "mmol_l": reading.mmol_l,
        "patient_id": reading.patient_id,
        "session_id": reading.session_id,
        "sample_type": reading.sample_type,
        "sample_location": reading.sample_location,
        "meal": None if reading.meal is None else str(reading.meal),
        "tester": None if reading.tester is None else str(reading.tester),
        "health": None if reading.health is None else str(reading.health),
        "flags": json.dumps(list(reading.flags)),
    }


GLUCOSE: RecordTable[GlucoseReading] = RecordTable(
    table="readings",
    kind="glucose",
    topic=contract.TOPIC_GLUCOSE,
    columns=_glucose_columns,
    payload=contract.glucose_payload,
)


def add_readings(store: Store, readings: Sequence[GlucoseReading]) -> AddResult:
    """Store readings not seen before, each with its ``glucose`` outbox message, in ONE durable transaction.

    A reading whose identity is already stored is counted as a duplicate and adds nothing, so a second
    download of the same meter is harmless. Raises IntakeRefused when the disk is nearly full.
    """
    if not readings:
        return AddResult()
    store.check_intake()
    with store.transaction(durable=True) as db:
        return insert_records(db, store, readings, GLUCOSE)


def upsert_meter(store: Store, info: MeterInfo) -> None:
    """Remember a meter (first and last seen, model, firmware)."""
    with store.transaction(durable=False) as db:
        write_meter(db, store, info)


def write_meter(db: Database, store: Store, info: MeterInfo) -> None:
    """The write of :func:`upsert_meter`, inside the caller's transaction."""
    now = iso(store.clock.utc_now())
    db.execute(
        "INSERT INTO meters (meter_id, family, transport, serial, model, firmware, address, first_seen, last_seen) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE SET "
        "model = coalesce(excluded.model, model), firmware = coalesce(excluded.firmware, firmware), "
        "address = coalesce(excluded.address, address), last_seen = excluded.last_seen",
        [
            info.meter_id,
            info.family,
            info.transport,
            info.serial,
            info.model,
            info.firmware,
            info.address,
            now,
            now,
        ],
    )


def last_sequence(store: Store, meter_id: str) -> int | None:
    """Highest record sequence stored for this meter, readings and control-solution results alike: the resume
    cursor for the next download."""
    value = store.scalar(
        "SELECT max(s) FROM (SELECT max(sequence) AS s FROM readings WHERE meter_id = ? "
        "UNION ALL SELECT max(sequence) FROM qc_results WHERE meter_id = ?)",
        [meter_id, meter_id],
    )
    return None if value is None else int(value)


def resume_identity(store: Store, meter_id: str) -> str | None:
    """Identity of the newest record of this meter's last complete download (written by
    :meth:`~gateway.store.downloads.DownloadWriter.finish`)."""
    value = store.scalar("SELECT resume_identity FROM meters WHERE meter_id = ?", [meter_id])
    return None if value is None else str(value)


def count_readings(store: Store, meter_id: str | None = None) -> int:
    """Number of stored readings (optionally of one meter)."""
    if meter_id is None:
        return int(store.scalar("SELECT count(*) FROM readings"))
    return int(store.scalar("SELECT count(*) FROM readings WHERE meter_id = ?", [meter_id]))


@dataclass(frozen=True, slots=True)
class SessionCounts:
    """What one desk session's download holds: how many readings, how many below and above two levels."""

    total: int
    low: int
    high: int


def session_counts(store: Store, session_id: str, *, low_below: float, high_above: float) -> SessionCounts:
    """Counts over every reading a desk session stored (``low_below`` / ``high_above`` in mmol/L)."""
    row = store.query(
        "SELECT count(*) AS total, coalesce(sum(mmol_l < ?), 0) AS low, coalesce(sum(mmol_l > ?), 0) AS high "
        "FROM readings WHERE session_id = ?",
        [low_below, high_above, session_id],
    )[0]
    return SessionCounts(int(row["total"]), int(row["low"]), int(row["high"]))


@dataclass(frozen=True, slots=True)
class ReadingRow:
    """A stored glucose reading as the desk shows it (patient data: behind login): when (UTC ISO text, and whether
    the meter's clock could be trusted), the value as measured and in mmol/L, the meal marker, the meter."""

    reading_id: str
    corrected_time: str
    time_trusted: bool
    value: float
    unit: Unit
    mmol_l: float
    meal: Meal | None
    meter_id: str


_READING_COLUMNS = columns(ReadingRow)


def _reading_rows(store: Store, sql: str, params: Sequence[Any]) -> list[ReadingRow]:
    """The rows of a query of :data:`_READING_COLUMNS` (in the fields' order), as tuples rather than dicts:
    a visit's picture reads thousands of them."""
    rows = store.rows(sql, params)
    return [
        ReadingRow(rid, when, bool(trusted), value, Unit(unit), mmol_l, None if meal is None else Meal(meal), meter)
        for rid, when, trusted, value, unit, mmol_l, meal, meter in rows
    ]


def readings_of_session(store: Store, session_id: str, *, limit: int, offset: int = 0) -> list[ReadingRow]:
    """A page of the readings one desk session stored, in meter order (a first download can bring a meter's
    whole history: the desk shows it a page at a time)."""
    return _reading_rows(
        store,
        f"SELECT {_READING_COLUMNS} FROM readings WHERE session_id = ? ORDER BY meter_time, sequence LIMIT ? OFFSET ?",
        [session_id, limit, offset],
    )


def patient_readings_since(store: Store, patient_id: str, since_iso: str) -> list[ReadingRow]:
    """A patient's readings with a corrected time after ``since_iso``, oldest first (the visit's picture).
    Readings only: a meter's control-solution results live in their own table."""
    return _reading_rows(
        store,
        f"SELECT {_READING_COLUMNS} FROM readings WHERE patient_id = ? AND corrected_time > ? "
        "ORDER BY corrected_time, id",
        [patient_id, since_iso],
    )


@dataclass(frozen=True, slots=True)
class MeterRow:
    """A meter (or cuff) the store has seen, as the device list shows it (no patient data). Times are UTC ISO
    text; ``last_error`` is the last download's ``"Type: message"`` text, cleared by the next good one."""

    meter_id: str
    family: str
    transport: str
    model: str | None
    last_seen: str
    last_sync: str | None
    last_error: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> MeterRow:
        """A row of :data:`_METER_COLUMNS`."""
        return cls(
            meter_id=row["meter_id"],
            family=row["family"],
            transport=row["transport"],
            model=row["model"],
            last_seen=row["last_seen"],
            last_sync=row["last_sync"],
            last_error=row["last_error"],
        )


_METER_COLUMNS = columns(MeterRow)


def list_meters(store: Store) -> list[MeterRow]:
    """Every meter seen, newest first."""
    rows = store.query(f"SELECT {_METER_COLUMNS} FROM meters ORDER BY last_seen DESC")
    return [MeterRow.from_row(row) for row in rows]


def meter_address(store: Store, meter_id: str) -> str | None:
    """The address a meter was last reached at (Bluetooth address, serial port), when the store has seen it."""
    value = store.scalar("SELECT address FROM meters WHERE meter_id = ?", [meter_id])
    return str(value) if value else None


def patient_for_meter(store: Store, meter_id: str) -> str | None:
    """The patient a meter is registered to at the desk, if any."""
    value = store.scalar("SELECT patient_id FROM meter_patients WHERE meter_id = ?", [meter_id])
    return None if value is None else str(value)


def link_meter_to_patient(store: Store, meter_id: str, patient_id: str, *, actor: str) -> None:
    """Register a meter as belonging to a patient (desk action, audited)."""
    from gateway.store import audit

    now = iso(store.clock.utc_now())
    with store.transaction() as db:
        db.execute(
            "INSERT INTO meter_patients (meter_id, patient_id, linked_by, linked_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (meter_id) DO UPDATE SET patient_id = excluded.patient_id, linked_by = excluded.linked_by, "
            "linked_at = excluded.linked_at",
            [meter_id, patient_id, actor, now],
        )
        audit.record(
            db, store, actor=actor, action="link_meter", target_kind="meter", target_id=meter_id, patient_id=patient_id
        )
