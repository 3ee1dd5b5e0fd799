"""Readings and their outbox rows: one transaction, unique identity, durable against a full disk."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from support.factories import MESSAGES, make_store, reading

from gateway.errors import DiskFull, IntakeRefused, StoreError
from gateway.records import Unit
from gateway.store import open_store
from gateway.store.outbox import Outbox
from gateway.store.readings import (
    add_readings,
    count_readings,
    last_sequence,
    patient_readings_since,
    reading_identity,
)
from gateway.store.referrals import _patient_seen
from gateway.wire import contract


def outbox_count(store) -> int:  # type: ignore[no-untyped-def]
    return int(store.scalar("SELECT count(*) FROM outbox"))


def test_each_new_reading_gets_exactly_one_valid_glucose_message(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    result = add_readings(store, [reading(1), reading(2, unit=Unit.MMOL_L, value=6.1)])
    assert (result.added, result.duplicates) == (2, 0)
    rows = store.query(
        f"SELECT o.payload, r.message_id, o.message_id AS mid FROM {MESSAGES} o JOIN readings r "
        "ON r.message_id = o.message_id ORDER BY o.seq"
    )
    assert len(rows) == 2
    for row in rows:
        doc = json.loads(row["payload"])
        contract.validate(contract.SCHEMA_GLUCOSE, doc)
        assert doc["message_id"] == row["mid"]
    assert json.loads(rows[0]["payload"])["mmol_l"] == 5.99


def test_a_second_download_of_the_same_records_adds_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 11)])
    again = add_readings(store, [reading(s) for s in range(1, 12)])
    assert (again.added, again.duplicates) == (1, 10)
    assert count_readings(store) == 11 == outbox_count(store)
    assert last_sequence(store, "gls:TEST1") == 11


def test_unnumbered_records_dedupe_on_time_and_value(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(None, minutes=5), reading(None, minutes=5, value=99.0)])
    again = add_readings(store, [reading(None, minutes=5)])
    assert again.duplicates == 1
    assert count_readings(store) == 2
    assert reading_identity(reading(None, minutes=5)) != reading_identity(reading(None, minutes=5, value=99.0))


def test_failure_inside_the_transaction_leaves_neither_reading_nor_message(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("INSERT INTO kv (key, value, updated_at) VALUES ('a', 'b', 'c')")
        add_readings(store, [reading(1)])  # nested: a savepoint
        raise RuntimeError("power cut emulation")
    assert count_readings(store) == 0
    assert outbox_count(store) == 0
    assert store.get_kv("a") is None


def test_full_disk_refuses_new_readings_and_keeps_what_is_stored(tmp_path: Path) -> None:
    # SQLite's max_page_count gives a real "database or disk is full" from the real engine: room for the
    # schema (however many migrations there are) plus a few pages of data.
    pages = make_store(tmp_path).scalar("PRAGMA page_count")
    store = make_store(tmp_path, max_page_count=pages + 12)
    add_readings(store, [reading(1)])
    with pytest.raises(DiskFull):
        for batch in range(200):
            add_readings(store, [reading(100 + batch * 20 + i) for i in range(20)])
    stored = count_readings(store)
    assert stored >= 1
    assert outbox_count(store) == stored  # never a reading without its message
    assert store.query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    # Space comes back: intake resumes.
    store.db.execute("PRAGMA max_page_count = 100000")
    assert add_readings(store, [reading(9999)]).added == 1


def test_intake_is_refused_below_the_free_space_floor(tmp_path: Path) -> None:
    store = make_store(tmp_path, min_free_mb=10**9)  # more than any disk has
    with pytest.raises(IntakeRefused):
        add_readings(store, [reading(1)])
    assert count_readings(store) == 0


def test_garbage_database_is_quarantined_with_its_bytes_and_reported(tmp_path: Path) -> None:
    garbage = b"not a database " * 1000
    (tmp_path / "gateway.db").write_bytes(garbage)
    store = make_store(tmp_path)
    moved = list(tmp_path.glob("gateway.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == garbage
    assert store.get_kv("quarantined_file") == str(moved[0])
    events = store.query("SELECT kind, level FROM events")
    assert events == [{"kind": "store_quarantined", "level": "error"}]
    assert Outbox(store).stats().counts == {"event": {"pending": 1}}
    assert add_readings(store, [reading(1)]).added == 1


def test_a_healthy_database_is_reopened_not_quarantined(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(1)])
    store.close()
    store = make_store(tmp_path)
    assert count_readings(store) == 1
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_wal_and_full_sync_are_on(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.scalar("PRAGMA journal_mode") == "wal"
    assert store.scalar("PRAGMA synchronous") == 2  # FULL


def test_migrations_are_recorded_and_not_reapplied(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    names = [r["name"] for r in store.query("SELECT name FROM _sqlite_migrations ORDER BY id")]
    assert names[0] == "0001_initial"
    store.close()
    again = open_store(tmp_path / "gateway.db", tmp_path / "images")
    assert [r["name"] for r in again.query("SELECT name FROM _sqlite_migrations ORDER BY id")] == names


def test_sqlite_errors_come_out_as_store_errors(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(StoreError) as info, store.transaction() as db:
        db.execute("INSERT INTO no_such_table VALUES (1)")
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_a_patients_readings_are_found_through_the_patient_index(tmp_path: Path) -> None:
    """Migration 0012: the visit picture's query and the referral check "was this patient ever here" walk the
    patient's own readings, not every reading the store keeps; the answers are those of a scan."""
    store = make_store(tmp_path)
    add_readings(store, [reading(s, patient_id=f"P-{s % 3}") for s in range(1, 31)])
    since = "2000-01-01T00:00:00+00:00"
    found = patient_readings_since(store, "P-1", since)
    scanned = store.query(
        "SELECT reading_id FROM readings NOT INDEXED WHERE patient_id = 'P-1' ORDER BY corrected_time, id"
    )
    assert [r.reading_id for r in found] == [r["reading_id"] for r in scanned] and len(found) == 10
    plans = {
        "visit": store.db.execute(
            "EXPLAIN QUERY PLAN SELECT reading_id FROM readings WHERE patient_id = ? AND corrected_time > ? "
            "ORDER BY corrected_time, id",
            ["P-1", since],
        ).fetchall(),
        "seen": store.db.execute(
            "EXPLAIN QUERY PLAN SELECT EXISTS (SELECT 1 FROM readings WHERE patient_id = ?)", ["P-9"]
        ).fetchall(),
    }
    for name, plan in plans.items():
        assert any("readings_patient_time" in row[3] for row in plan), (name, plan)
    with store.transaction() as db:
        assert _patient_seen(db, "P-2") and not _patient_seen(db, "P-9")
