"""Readings downloaded without a patient (auto-sync) and their assignment at the nurse's desk (issue 14, nurse 1):
one audited transaction, a ``cg.assignment/1`` correction the reference receiver applies idempotently, nothing
assigned or sent twice."""

from __future__ import annotations

import json
from pathlib import Path

from support.factories import MESSAGES, bp_reading, make_store, reading

from gateway.emulate.platform import Receiver, ReceiverSettings, _Incoming
from gateway.records import ControlResult
from gateway.store import assignments
from gateway.store.assignments import ReadingKind
from gateway.store.blood_pressure import add_blood_pressure
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


def _shared_cuff(tmp_path: Path) -> Store:
    """A two-user cuff downloaded for P-0042 (user 2 chosen): user 1's measurements kept without a patient; and an
    older download of another cuff that names no user, before any patient was set."""
    store = make_store(tmp_path)
    add_blood_pressure(store, [
        *(bp_reading(i, user_id=2, patient_id="P-0042") for i in (2, 4)),
        *(bp_reading(i, user_id=1, patient_id=None) for i in (1, 3, 5)),
        bp_reading(6, user_id=3, patient_id=None),
        bp_reading(1, meter_id="bps:SOLO", user_id=None, patient_id=None),
    ])  # fmt: skip
    return store


def _bp_patients(store: Store) -> dict[tuple[str, int | None], set[str | None]]:
    found: dict[tuple[str, int | None], set[str | None]] = {}
    for r in store.query("SELECT meter_id, cuff_user, patient_id FROM blood_pressure"):
        found.setdefault((r["meter_id"], r["cuff_user"]), set()).add(r["patient_id"])
    return found


def test_a_shared_cuffs_other_users_wait_one_group_per_user(tmp_path: Path) -> None:
    store = _shared_cuff(tmp_path)
    groups = assignments.unassigned(store)
    assert [(g.record, g.meter_id, g.cuff_user, g.count) for g in groups] == [
        (ReadingKind.BLOOD_PRESSURE, "bps:SOLO", None, 1),  # newest first
        (ReadingKind.BLOOD_PRESSURE, "bps:CUFF1", 3, 1),
        (ReadingKind.BLOOD_PRESSURE, "bps:CUFF1", 1, 3),
    ]
    assert [g.cuff_user for g in assignments.unassigned(store, "bps:CUFF1")] == [3, 1]


def test_one_cuff_users_measurements_are_assigned_and_corrected_on_the_blood_pressure_topic(tmp_path: Path) -> None:
    store = _shared_cuff(tmp_path)
    user1 = next(g for g in assignments.unassigned(store) if g.cuff_user == 1)
    user1_ids = [r["reading_id"] for r in store.query("SELECT reading_id FROM blood_pressure WHERE cuff_user = 1")]
    result = assignments.assign(store, "bps:CUFF1", "P-0077", through=user1.through, actor="nurse1",
                                record=ReadingKind.BLOOD_PRESSURE, cuff_user=1)  # fmt: skip
    assert (result.count, result.messages) == (3, 1)
    assert _bp_patients(store) == {
        ("bps:CUFF1", 1): {"P-0077"},
        ("bps:CUFF1", 2): {"P-0042"},  # the patient's own, untouched
        ("bps:CUFF1", 3): {None},  # the third user's wait
        ("bps:SOLO", None): {None},
    }
    [message] = store.query(f"SELECT * FROM {MESSAGES} WHERE kind = 'blood_pressure_assignment'")
    assert message["topic"] == contract.TOPIC_BLOOD_PRESSURE_ASSIGNMENT
    doc = json.loads(message["payload"])
    contract.validate(contract.SCHEMA_ASSIGNMENT, doc)
    assert (doc["patient_id"], doc["meter_id"]) == ("P-0077", "bps:CUFF1")
    assert sorted(doc["reading_ids"]) == sorted(user1_ids)
    [row] = store.query("SELECT * FROM audit WHERE action = 'assign_readings'")
    detail = json.loads(row["detail"])
    assert (detail["record"], detail["cuff_user"], detail["readings"]) == ("blood_pressure", 1, 3)
    # Again (a stale page): nothing; a glucose assignment of the cuff's id touches no blood pressure reading.
    again = assignments.assign(store, "bps:CUFF1", "P-0099", through=user1.through, actor="n",
                               record=ReadingKind.BLOOD_PRESSURE, cuff_user=1)  # fmt: skip
    assert again.count == 0
    assert assignments.assign(store, "bps:CUFF1", "P-0099", through=10**9, actor="n").count == 0
    assert _bp_patients(store)[("bps:CUFF1", 3)] == {None}


def test_a_cuff_that_names_no_user_is_assigned_whole(tmp_path: Path) -> None:
    store = _shared_cuff(tmp_path)
    solo = next(g for g in assignments.unassigned(store) if g.meter_id == "bps:SOLO")
    result = assignments.assign(store, "bps:SOLO", "P-0001", through=solo.through, actor="n",
                                record=ReadingKind.BLOOD_PRESSURE, cuff_user=None)  # fmt: skip
    assert result.count == 1 and _bp_patients(store)[("bps:SOLO", None)] == {"P-0001"}
    # A user number for a cuff that names none matches nothing.
    assert _bp_patients(store)[("bps:CUFF1", 1)] == {None}


def test_the_desk_finds_a_cuffs_unassigned_measurements_through_their_index(tmp_path: Path) -> None:
    store = _shared_cuff(tmp_path)
    plan = " ".join(
        str(r[-1])
        for r in store.db.conn.execute(
            "EXPLAIN QUERY PLAN SELECT meter_id, cuff_user, count(*) FROM blood_pressure WHERE patient_id IS NULL "
            "GROUP BY meter_id, cuff_user"
        )
    )
    assert "blood_pressure_unassigned" in plan


def test_reference_receiver_files_a_cuff_users_measurements_under_the_assigned_patient(tmp_path: Path) -> None:
    store = _shared_cuff(tmp_path)
    user1 = next(g for g in assignments.unassigned(store) if g.cuff_user == 1)
    assignments.assign(store, "bps:CUFF1", "P-0077", through=user1.through, actor="n",
                       record=ReadingKind.BLOOD_PRESSURE, cuff_user=1)  # fmt: skip
    rows = store.query(f"SELECT * FROM {MESSAGES} WHERE kind LIKE 'blood_pressure%' ORDER BY seq")
    items = [_Incoming(PREFIX + r["topic"], bytes(r["payload"]), {}) for r in rows]
    receiver = Receiver(ReceiverSettings(host="127.0.0.1", port=1, db_path=tmp_path / "platform.db"))
    try:
        receiver.process([items[-1]])  # the correction may come first
        receiver.process(items)
        filed = {(r["doc"]["cuff_user"], r["patient_id"]) for r in receiver.blood_pressure()}
        assert filed == {(2, "P-0042"), (1, "P-0077"), (3, None), (None, None)}
        assert len(receiver.blood_pressure()) == 7 and receiver.counts()["invalid"] == 0
    finally:
        receiver.store.close()
