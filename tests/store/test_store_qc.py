"""Quality-control (control-solution) results in the store (issue 16 gap 1): their own table and messages, the
migration that moves the ones earlier versions kept among the readings, and the guard that keeps them out."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from sqlite_utils import Database
from support.factories import MESSAGES, T0, confirm, make_store, reading

from gateway.errors import StoreError
from gateway.records import ControlResult, QcOutcome
from gateway.store import qc as store_qc
from gateway.store import retention
from gateway.store.migrations import MIGRATIONS
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings, last_sequence
from gateway.wire import contract


def control(seq: int | None, **kw: object) -> ControlResult:
    return ControlResult(**{**reading(seq).shared_fields(), "value": 118.0, **kw})


# -- migration 0008 ------------------------------------------------------------------------------------------
PATIENT, CONTROL_ACKED, CONTROL_PENDING, CONTROL_PARKED = (f"{n:032x}" for n in range(1, 5))  # reading ids
LEGACY = [
    # (reading_id, sequence, control_solution, message state)
    (PATIENT, 1, 0, "pending"),
    (CONTROL_ACKED, 2, 1, "acked"),
    (CONTROL_PENDING, 3, 1, "pending"),
    (CONTROL_PARKED, 4, 1, "parked"),
]


def _legacy_store(path: Path) -> None:
    """A store as 0001-0007 left it: control-solution tests among the patient's readings, messages in each state."""
    db = Database(path)
    MIGRATIONS.apply(db, stop_before="0008_quality_control_results")
    with db.conn:
        for reading_id, seq, control_solution, state in LEGACY:
            message_id = f"m-{reading_id}"
            db.conn.execute(
                "INSERT INTO readings (reading_id, identity, meter_id, sequence, meter_time, clock_offset_s, "
                "corrected_time, time_trusted, value, unit, mmol_l, patient_id, session_id, control_solution, "
                "flags, stored_at, message_id) VALUES (?, ?, 'gls:M1', ?, '2026-11-01T07:30:00', 12.0, "
                "'2026-11-01T07:30:12+00:00', 1, 118.0, 'mg/dL', 6.55, 'P-0001', 's-1', ?, '[]', "
                "'2026-11-01T08:00:00.000+00:00', ?)",
                [reading_id, f"gls:M1#seq={seq}", seq, control_solution, message_id],
            )
            cur = db.conn.execute(
                "INSERT INTO outbox (message_id, kind, created_at, state, sent_at, acked_at) VALUES (?, 'glucose', "
                "'2026-11-01T08:00:00', ?, ?, ?)",
                [message_id, state, "2026-11-01T08:00:01" if state == "acked" else None,
                 "2026-11-01T08:00:02" if state == "acked" else None],
            )  # fmt: skip
            if state != "acked":
                db.conn.execute(
                    "INSERT INTO outbox_bodies (seq, topic, payload) VALUES (?, 'glucose', ?)",
                    [cur.lastrowid, b'{"patient_id": "P-0001", "control_solution": true}'],
                )
    db.close()


def test_migration_0008_moves_control_tests_out_of_the_readings(tmp_path: Path) -> None:
    _legacy_store(tmp_path / "gateway.db")
    store = make_store(tmp_path)  # opening applies 0008, then queues what it withdrew
    assert [r["reading_id"] for r in store.query("SELECT reading_id FROM readings")] == [PATIENT]
    moved = {r["qc_id"]: r for r in store.query("SELECT * FROM qc_results")}
    assert set(moved) == {CONTROL_ACKED, CONTROL_PENDING, CONTROL_PARKED}
    assert "patient_id" not in moved[CONTROL_ACKED]  # the table has no patient column at all
    # Acked: the platform has it (as a reading, the old contract said so); the row keeps that message.
    acked = moved.pop(CONTROL_ACKED)
    assert (acked["message_id"], acked["sent_as_glucose"]) == (f"m-{CONTROL_ACKED}", 1)
    # Not acked: the glucose message is gone unsent, and a cg.qc/1 message replaces it.
    glucose = {r["message_id"]: r["state"] for r in store.query("SELECT message_id, state FROM outbox "
                                                                "WHERE kind = 'glucose'")}  # fmt: skip
    assert glucose == {f"m-{PATIENT}": "pending", f"m-{CONTROL_ACKED}": "acked"}
    for row in moved.values():
        assert row["sent_as_glucose"] == 0 and row["message_id"]
        (message,) = store.query(f"SELECT * FROM {MESSAGES} WHERE message_id = ?", [row["message_id"]])
        assert (message["kind"], message["topic"], message["state"]) == ("qc", "qc", "pending")
        doc = json.loads(message["payload"])
        contract.validate(contract.SCHEMA_QC, doc)
        assert "patient_id" not in doc and doc["meter_id"] == "gls:M1"
    counts = Outbox(store).stats().counts
    assert counts == {"glucose": {"pending": 1, "acked": 1}, "qc": {"pending": 2}}
    store.close()
    again = make_store(tmp_path)  # queued once: opening again adds nothing
    assert Outbox(again).stats().counts == counts


def test_readings_refuse_a_control_solution_row(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises((StoreError, sqlite3.IntegrityError), match="quality control"), store.transaction() as db:
        db.execute(
            "INSERT INTO readings (reading_id, identity, meter_id, meter_time, clock_offset_s, corrected_time, "
            "time_trusted, value, unit, mmol_l, control_solution, stored_at, message_id) "
            "VALUES ('x', 'i', 'm', 't', 0, 't', 1, 1, 'mg/dL', 1, 1, 's', 'mid')"
        )


# -- storing, the cursor, the prune --------------------------------------------------------------------------
def test_results_and_their_messages_are_stored_once(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = store_qc.add_results(store, [control(5, lot="L-1", outcome=QcOutcome.PASS), control(None)])
    again = store_qc.add_results(store, [control(5, lot="L-1", outcome=QcOutcome.PASS)])
    assert (first.added, again.added, again.duplicates) == (2, 0, 1)
    rows = store_qc.history(store, "gls:TEST1")
    assert {(r.sequence, r.lot, r.outcome) for r in rows} == {(5, "L-1", "pass"), (None, None, None)}
    payloads = [json.loads(r["payload"]) for r in store.query(f"SELECT payload FROM {MESSAGES} WHERE kind = 'qc'")]
    assert len(payloads) == 2
    for doc in payloads:
        contract.validate(contract.SCHEMA_QC, doc)
    assert store.scalar("SELECT count(*) FROM readings") == 0


def test_the_resume_cursor_counts_control_results(tmp_path: Path) -> None:
    """A meter whose newest records are control tests is not read again from before them."""
    store = make_store(tmp_path)
    add_readings(store, [reading(3)])
    store_qc.add_results(store, [control(4)])
    assert last_sequence(store, "gls:TEST1") == 4


def test_the_prune_takes_confirmed_old_results_and_keeps_unconfirmed_ones(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store_qc.add_results(store, [control(1), control(2)])
    (acked, _) = [r["message_id"] for r in store.query("SELECT message_id FROM qc_results ORDER BY sequence")]
    assert confirm(store, [acked]) == 1
    later = T0 + timedelta(days=100)
    result = retention.prune(store, 30, now=later)
    assert result.qc_results == 1
    assert [r["sequence"] for r in store.query("SELECT sequence FROM qc_results")] == [2]
    assert not store.query("SELECT 1 FROM outbox WHERE message_id = ?", [acked])
    assert result.readings == 0
