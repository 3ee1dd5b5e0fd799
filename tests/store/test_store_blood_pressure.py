"""Blood pressure readings in the store: one message each, identity and dedupe, cursor per cuff user, the
download's unit of work, retention; a real SQLite file each time."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from support.factories import MESSAGES, T0, bp_reading, make_store, reading

from gateway.clock import FakeClock
from gateway.records import CuffStatus, PressureUnit
from gateway.store import blood_pressure as store_bp
from gateway.store.downloads import DownloadWriter
from gateway.store.migrations import MIGRATIONS
from gateway.store.outbox import Outbox
from gateway.store.retention import prune
from gateway.wire import contract


def test_migration_0009_creates_the_table_with_a_unique_identity(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert "0009_blood_pressure" in [m.name for m in MIGRATIONS.applied(store.db)]
    indexes = {
        r["name"]: r["unique"] for r in store.query("SELECT name, \"unique\" FROM pragma_index_list('blood_pressure')")
    }
    assert any(unique for unique in indexes.values())
    columns = {r["name"] for r in store.query("SELECT name FROM pragma_table_info('blood_pressure')")}
    assert {"identity", "systolic", "systolic_mmhg", "unit", "cuff_user", "status", "message_id"} <= columns


def test_each_new_reading_gets_one_valid_blood_pressure_message(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    result = store_bp.add_blood_pressure(
        store, [bp_reading(1), bp_reading(2, unit=PressureUnit.KPA, systolic=16.0, diastolic=10.7, mean_arterial=12.5,
                                          status=(CuffStatus.IRREGULAR_PULSE,))]
    )  # fmt: skip
    assert (result.added, result.duplicates) == (2, 0)
    rows = store.query(f"SELECT kind, topic, payload FROM {MESSAGES} ORDER BY seq")
    assert [(r["kind"], r["topic"]) for r in rows] == [("blood_pressure", "blood-pressure")] * 2
    docs = [json.loads(r["payload"]) for r in rows]
    for doc in docs:
        contract.validate(contract.SCHEMA_BLOOD_PRESSURE, doc)
    kpa = docs[1]
    assert (kpa["systolic"], kpa["diastolic"], kpa["unit"]) == (16.0, 10.7, "kPa")  # as reported ...
    assert (kpa["systolic_mmhg"], kpa["diastolic_mmhg"], kpa["mean_arterial_mmhg"]) == (
        120.0,
        80.3,
        93.8,
    )  # ... and mmHg
    assert kpa["status"] == ["irregular_pulse"]
    stored = store.query("SELECT reading_id, message_id FROM blood_pressure ORDER BY id")
    assert [r["message_id"] for r in stored] == [d["message_id"] for d in docs]


def test_a_second_download_adds_nothing_and_identity_separates_users(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store_bp.add_blood_pressure(store, [bp_reading(s) for s in range(1, 6)])
    again = store_bp.add_blood_pressure(store, [bp_reading(s) for s in range(1, 6)])
    assert (again.added, again.duplicates) == (0, 5)
    # a cuff without record numbers: the same time and values again is the same reading; another user's is not
    unnumbered = [bp_reading(None, minutes=3), bp_reading(None, minutes=3), bp_reading(None, minutes=3, user_id=2)]
    result = store_bp.add_blood_pressure(store, unnumbered)
    assert (result.added, result.duplicates) == (2, 1)
    assert store_bp.count_blood_pressure(store, "bps:CUFF1") == 7
    assert store.scalar("SELECT count(*) FROM outbox WHERE kind = 'blood_pressure'") == 7


def test_cursor_per_cuff(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store_bp.add_blood_pressure(store, [bp_reading(3, user_id=1), bp_reading(7, user_id=2), bp_reading(5, user_id=1)])
    assert store_bp.last_sequence(store, "bps:CUFF1") == 7  # every user's: all of them are stored
    assert store_bp.last_sequence(store, "bps:OTHER") is None


def test_a_visits_readings_come_back_as_typed_rows_with_the_cuffs_status_decoded(tmp_path: Path) -> None:
    """``status`` is stored as a JSON list of names: the row gives it back as the cuff's flags, in their order;
    the unit as the cuff reported it; another patient's reading of the same session is not among them."""
    store = make_store(tmp_path)
    flags = (CuffStatus.IRREGULAR_PULSE, CuffStatus.BODY_MOVEMENT)
    store_bp.add_blood_pressure(store, [
        bp_reading(1, status=flags, unit=PressureUnit.KPA, systolic=18.0, diastolic=11.0, session_id="S-1"),
        bp_reading(2, mean_arterial=None, pulse_bpm=None, user_id=None, session_id="S-1"),
        bp_reading(3, patient_id="P-0002", session_id="S-1"),
    ])  # fmt: skip
    newest, oldest = store_bp.of_sessions(store, ["S-1"], patient_id="P-0001")
    assert oldest.status == flags and all(isinstance(s, CuffStatus) for s in oldest.status)
    assert (oldest.unit, oldest.systolic, oldest.time_trusted) == (PressureUnit.KPA, 18.0, True)
    assert newest.status == () and (newest.mean_arterial_mmhg, newest.pulse_bpm, newest.cuff_user) == (None, None, None)
    assert len(store_bp.of_sessions(store, ["S-1"])) == 3


def test_download_writer_takes_blood_pressure_in_its_batch_transaction(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    writer = DownloadWriter.begin(store, patient_id="P-0001", operator="nurse")
    batch = [bp_reading(s) for s in range(1, 4)]
    result = writer.add_batch(batch)
    assert (result.added, writer.added) == (3, 3)
    writer.add_batch(batch)
    assert (writer.added, writer.duplicates) == (3, 3)
    session = store.query("SELECT records_new FROM sessions WHERE session_id = ?", [writer.session_id])[0]
    assert session["records_new"] == 3


def test_retention_prunes_acked_blood_pressure_and_keeps_the_unsent(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock)
    store_bp.add_blood_pressure(store, [bp_reading(s) for s in range(1, 5)])
    outbox = Outbox(store)
    claimed = outbox.claim_batch(3)  # sent, then confirmed by the platform
    assert outbox.ack([m.message_id for m in claimed]).applied == 3
    clock.advance(timedelta(days=91).total_seconds())
    result = prune(store, 90)
    assert result.blood_pressure == 3
    assert store_bp.count_blood_pressure(store) == 1  # the one the platform has not confirmed stays
    assert store.scalar("SELECT count(*) FROM outbox WHERE kind = 'blood_pressure'") == 1


def test_glucose_and_blood_pressure_side_by_side(tmp_path: Path) -> None:
    from gateway.store.readings import add_readings

    store = make_store(tmp_path)
    add_readings(store, [reading(1)])
    store_bp.add_blood_pressure(store, [bp_reading(1)])
    kinds = [r["kind"] for r in store.query(f"SELECT kind FROM {MESSAGES} ORDER BY seq")]
    assert kinds == ["glucose", "blood_pressure"]
