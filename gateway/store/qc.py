"""Quality-control (control-solution) results: the meter's, never a patient's. A result and its ``cg.qc/1``
outbox message are written in one transaction, as readings are.

Kept in their own table (``qc_results``, migration ``0008_quality_control_results``), which has no patient
column: no patient view or statistic reads it. The desk shows them as the meter's QC history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from gateway.records import ControlResult, QcOutcome, Unit
from gateway.store.db import Store, columns, iso, new_id
from gateway.store.outbox import enqueue
from gateway.store.readings import reading_identity
from gateway.wire import contract

_logger = logging.getLogger(__name__)

KIND = "qc"
"""The outbox kind of a QC message (``gateway outbox retry --kind qc``)."""


@dataclass(slots=True)
class QcAddResult:
    """What :func:`insert_results` did."""

    added: int = 0
    duplicates: int = 0
    qc_ids: list[str] = field(default_factory=list)


def _enqueue(db: Database, store: Store, result: ControlResult, *, qc_id: str, message_id: str) -> None:
    now = store.clock.utc_now()
    origin = store.origin
    enqueue(
        db,
        kind=KIND,
        topic=contract.TOPIC_QC,
        created_at=now,
        message_id=message_id,
        record_ref=f"qc:{qc_id}",  # the prune finds a QC result's message by it, as a capture's
        payload=contract.qc_payload(
            result,
            qc_id=qc_id,
            envelope=origin.envelope(message_id, now),
            payload_format=origin.payload_format,
        ),
    )


def insert_results(db: Database, store: Store, results: Sequence[ControlResult]) -> QcAddResult:
    """Store control-solution results not seen before, each with its ``qc`` message, inside the caller's
    (durable) transaction. A result whose identity is stored already adds nothing."""
    added = QcAddResult()
    now = iso(store.clock.utc_now())
    for result in results:
        qc_id, message_id = new_id(), new_id()
        cur = db.execute(
            "INSERT OR IGNORE INTO qc_results (qc_id, identity, meter_id, sequence, meter_time, clock_offset_s, "
            "corrected_time, time_trusted, value, unit, mmol_l, lot, outcome, session_id, flags, stored_at, "
            "message_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                qc_id,
                reading_identity(result),
                result.meter_id,
                result.sequence,
                result.meter_time.isoformat(),
                result.clock_offset_s,
                iso(result.corrected_time),
                int(result.time_trusted),
                result.value,
                str(result.unit),
                result.mmol_l,
                result.lot,
                None if result.outcome is None else str(result.outcome),
                result.session_id,
                json.dumps(list(result.flags)),
                now,
                message_id,
            ],
        )
        if cur.rowcount == 0:
            added.duplicates += 1
            continue
        _enqueue(db, store, result, qc_id=qc_id, message_id=message_id)
        added.added += 1
        added.qc_ids.append(qc_id)
    return added


def add_results(store: Store, results: Sequence[ControlResult]) -> QcAddResult:
    """Store control-solution results with their messages in ONE durable transaction (IntakeRefused when the
    disk is nearly full)."""
    if not results:
        return QcAddResult()
    store.check_intake()
    with store.transaction(durable=True) as db:
        return insert_results(db, store, results)


def _result_of(row: dict[str, Any]) -> ControlResult:
    """A stored row as the record it was (for a message queued after the fact)."""
    return ControlResult(
        meter_id=row["meter_id"],
        sequence=row["sequence"],
        meter_time=datetime.fromisoformat(row["meter_time"]),
        clock_offset_s=row["clock_offset_s"],
        corrected_time=datetime.fromisoformat(row["corrected_time"]),
        time_trusted=bool(row["time_trusted"]),
        value=row["value"],
        unit=Unit(row["unit"]),
        lot=row["lot"],
        outcome=None if row["outcome"] is None else QcOutcome(row["outcome"]),
        session_id=row["session_id"],
        flags=tuple(json.loads(row["flags"])),
    )


def queue_withheld(store: Store) -> int:
    """Queue the ``cg.qc/1`` message of every result that has none: the control-solution rows migration 0008
    moved out of ``readings`` before their glucose message went out. Idempotent; runs when the store opens."""
    rows = store.query("SELECT * FROM qc_results WHERE message_id IS NULL ORDER BY id")
    if not rows:
        return 0
    with store.transaction(durable=True) as db:
        for row in rows:
            message_id = new_id()
            db.execute("UPDATE qc_results SET message_id = ? WHERE id = ?", [message_id, row["id"]])
            _enqueue(db, store, _result_of(row), qc_id=row["qc_id"], message_id=message_id)
    _logger.info("queued %d control-solution results as QC messages (moved out of the readings)", len(rows))
    return len(rows)


@dataclass(frozen=True, slots=True)
class QcResultRow:
    """A stored control-solution result as the desk's QC panel shows it: the meter's, never a patient's (the
    table has no patient column). ``outcome`` is None where the meter gives no verdict."""

    qc_id: str
    meter_id: str
    sequence: int | None
    corrected_time: str
    value: float
    unit: Unit
    mmol_l: float
    lot: str | None
    outcome: QcOutcome | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> QcResultRow:
        """A row of :data:`_ROW_COLUMNS`."""
        return cls(
            qc_id=row["qc_id"],
            meter_id=row["meter_id"],
            sequence=row["sequence"],
            corrected_time=row["corrected_time"],
            value=row["value"],
            unit=Unit(row["unit"]),
            mmol_l=row["mmol_l"],
            lot=row["lot"],
            outcome=None if row["outcome"] is None else QcOutcome(row["outcome"]),
        )


_ROW_COLUMNS = columns(QcResultRow)


def results_of_session(store: Store, session_id: str) -> list[QcResultRow]:
    """The control-solution results one desk download stored, in meter order."""
    rows = store.query(
        f"SELECT {_ROW_COLUMNS} FROM qc_results WHERE session_id = ? ORDER BY meter_time, sequence", [session_id]
    )
    return [QcResultRow.from_row(row) for row in rows]


def history(store: Store, meter_id: str, *, limit: int = 20) -> list[QcResultRow]:
    """A meter's QC history, newest first."""
    rows = store.query(
        f"SELECT {_ROW_COLUMNS} FROM qc_results WHERE meter_id = ? ORDER BY corrected_time DESC, id DESC LIMIT ?",
        [meter_id, limit],
    )
    return [QcResultRow.from_row(row) for row in rows]


def count_results(store: Store, meter_id: str | None = None) -> int:
    """Number of stored control-solution results (optionally of one meter)."""
    if meter_id is None:
        return int(store.scalar("SELECT count(*) FROM qc_results"))
    return int(store.scalar("SELECT count(*) FROM qc_results WHERE meter_id = ?", [meter_id]))
