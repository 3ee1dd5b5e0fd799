"""Readings downloaded without a patient (auto-sync) and their assignment at the nurse's desk (issue 14, nurse 1):
one audited transaction, a ``cg.assignment/1`` correction the reference receiver applies idempotently, nothing
assigned or sent twice."""

from __future__ import annotations

import json
from pathlib import Path

from support.factories import MESSAGES, make_store, reading

from gateway.emulate.platform import Receiver, ReceiverSettings, _Incoming
from gateway.records import ControlResult
from gateway.store import assignments
from gateway.store.db import Store
from gateway.store.qc import insert_results
from gateway.store.readings import add_readings
from gateway.wire import contract

PREFIX = "cg/v1/site/gateway/"


def _auto_synced(tmp_path: Path, n: int = 3) -> tuple[Store, list[str]]:
    store = make_store(tmp_path)
    added = add_readings(store, [reading(i, patient_id=None) for i in range(1, n + 1)])
    add_readings(store, [reading(1, meter_id="gls:OTHER", patient_id="P-0009")])
    with store.transaction() as db:  # a control-solution test of the same meter: never the patient's
        control = ControlResult(**{**reading(n + 1).shared_fields(), "value": 118.0})
        insert_results(db, store, [control])
    return store, added.reading_ids


def test_unassigned_lists_a_meters_readings_without_patient(tmp_path: Path) -> None:
    store, _ids = _auto_synced(tmp_path)
    [group] = assignments.unassigned(store)
    assert (group.meter_id, group.count) == ("gls:TEST1", 3)
    assert group.first_time < group.last_time


def test_assign_is_one_audited_transaction_with_a_valid_correction(tmp_path: Path) -> None:
    store, ids = _auto_synced(tmp_path)
    [group] = assignments.unassigned(store)
    result = assignments.assign(store, "gls:TEST1", "P-0042", through=group.through, actor="nurse1")
    assert (result.count, result.messages) == (3, 1)
    patients = {r["patient_id"] for r in store.query("SELECT patient_id FROM readings WHERE meter_id = 'gls:TEST1'")}
    assert patients == {"P-0042"}
    assert assignments.unassigned(store) == []
    [row] = store.query("SELECT * FROM audit WHERE action = 'assign_readings'")
    assert (row["actor"], row["patient_id"], row["target_id"]) == ("nurse1", "P-0042", "gls:TEST1")
    assert row["at"] and json.loads(row["detail"])["readings"] == 3
    [message] = store.query(f"SELECT * FROM {MESSAGES} WHERE kind = 'assignment'")
    doc = json.loads(message["payload"])
    contract.validate(contract.SCHEMA_ASSIGNMENT, doc)
    assert message["topic"] == contract.TOPIC_ASSIGNMENT
    assert (doc["patient_id"], sorted(doc["reading_ids"])) == ("P-0042", sorted(ids))
    # The glucose messages are not sent again: one per reading, as before.
    assert store.scalar("SELECT count(*) FROM outbox WHERE kind = 'glucose'") == 4
    # A second click (a stale page) assigns nothing and sends nothing.
    again = assignments.assign(store, "gls:TEST1", "P-0099", through=group.through, actor="nurse2")
    assert (again.count, again.messages) == (0, 0)
    assert store.scalar("SELECT count(*) FROM outbox WHERE kind = 'assignment'") == 1


def test_assign_takes_no_reading_stored_after_the_page_was_shown(tmp_path: Path) -> None:
    store, _ids = _auto_synced(tmp_path)
    [group] = assignments.unassigned(store)
    add_readings(store, [reading(10, patient_id=None)])
    assert assignments.assign(store, "gls:TEST1", "P-0042", through=group.through, actor="n").count == 3
    [left] = assignments.unassigned(store)
    assert left.count == 1


def test_a_large_assignment_is_split_under_the_schemas_limit(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(i, patient_id=None) for i in range(1, contract.ASSIGNMENT_MAX_READINGS + 6)])
    [group] = assignments.unassigned(store)
    result = assignments.assign(store, "gls:TEST1", "P-1", through=group.through, actor="n")
    assert (result.count, result.messages) == (contract.ASSIGNMENT_MAX_READINGS + 5, 2)


def _glucose_items(store: Store) -> list[_Incoming]:
    rows = store.query(f"SELECT * FROM {MESSAGES} WHERE kind IN ('glucose', 'assignment') ORDER BY seq")
    return [_Incoming(PREFIX + r["topic"], bytes(r["payload"]), {}) for r in rows]


def test_reference_receiver_files_each_reading_once_under_the_patient(tmp_path: Path) -> None:
    store, ids = _auto_synced(tmp_path)
    [group] = assignments.unassigned(store)
    assignments.assign(store, "gls:TEST1", "P-0042", through=group.through, actor="nurse1")
    items = _glucose_items(store)
    receiver = Receiver(ReceiverSettings(host="127.0.0.1", port=1, db_path=tmp_path / "platform.db"))
    try:
        # The correction first (the readings still queued behind it), then everything again (redelivery).
        receiver.process([items[-1]])
        receiver.process(items)
        receiver.process(items)
        rows = [r for r in receiver.readings() if r["meter_id"] == "gls:TEST1"]
        assert sorted(r["reading_id"] for r in rows) == sorted(ids)  # each reading once
        assert {r["patient_id"] for r in rows} == {"P-0042"}
        assert receiver.counts()["invalid"] == 0
        other = [r for r in receiver.readings() if r["meter_id"] == "gls:OTHER"]
        assert [r["patient_id"] for r in other] == ["P-0009"]
    finally:
        receiver.store.close()
