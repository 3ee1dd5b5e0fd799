"""The outbox's state apart from its payloads (issue 17): the migration, narrow transitions, maintained counts,
bounded prune passes."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlite_utils import Database
from support.factories import MESSAGES, T0, confirm, make_store, reading, store_capture

from gateway.clock import FakeClock
from gateway.store import Store, retention
from gateway.store import outbox as outbox_module
from gateway.store.events import add_event
from gateway.store.migrations import MIGRATIONS
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings

OLD = T0 - timedelta(days=120)


def scanned_counts(store: Store) -> dict[str, dict[str, int]]:
    """Counts per kind and state the slow way: a scan of every message."""
    counts: dict[str, dict[str, int]] = {}
    for row in store.query("SELECT kind, state, count(*) AS n FROM outbox GROUP BY kind, state"):
        counts.setdefault(row["kind"], {})[row["state"]] = row["n"]
    return counts


# -- the migration ---------------------------------------------------------------------------------------------
OLD_OUTBOX_ROWS = [
    # (message_id, kind, topic, payload, body_ref, properties, record_ref, state, attempts, sent_at, acked_at, reason)
    ("m-pending", "glucose", "glucose", b'{"v":1}', None, "{}", "reading:r1", "pending", 0, None, None, None),
    ("m-sent", "glucose", "glucose", b'{"v":2}', None, "{}", "reading:r2", "sent", 1, "2026-11-01T08:00:00", None,
     None),
    ("m-acked", "glucose", "glucose", b'{"v":3}', None, "{}", "reading:r3", "acked", 1, "2026-11-01T08:00:00",
     "2026-11-01T08:00:01", None),
    ("m-requeued", "glucose", "glucose", b'{"v":4}', None, "{}", "reading:r4", "pending", 2, "2026-11-01T08:00:00",
     None, None),
    ("m-parked", "capture", "retina/capture", b'{"c":1}', None, "{}", "capture:c1", "parked", 1,
     "2026-11-01T08:00:00", None, "broker refused the message: too large"),
    ("m-chunk", "image_chunk", "retina/image/c1", None, "image:ab:0:10", '{"index": "0"}', "capture:c1", "pending",
     0, None, None, None),
    ("m-event", "event", "events", b'{"e":1}', None, "{}", None, "acked", 1, "2026-11-01T08:00:00",
     "2026-11-01T08:00:01", None),
]  # fmt: skip


def test_migration_0007_moves_messages_in_every_state(tmp_path: Path) -> None:
    """A store built by migrations 0001-0006 with messages in every state: 0007 keeps every message's identity,
    state, attempts and times, the bodies of unsent ones byte for byte, the seq high-water mark, and counts them."""
    path = tmp_path / "gateway.db"
    db = Database(path)
    MIGRATIONS.apply(db, stop_before="0007_outbox_state_apart")
    with db.conn:
        db.conn.executemany(
            "INSERT INTO outbox (message_id, kind, topic, payload, body_ref, properties, record_ref, state, attempts, "
            "created_at, sent_at, acked_at, parked_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "'2026-11-01T07:00:00', ?, ?, ?)",
            OLD_OUTBOX_ROWS,
        )
        # An eighth message, sent and pruned long ago: its seq is never handed out again.
        db.conn.execute(
            "INSERT INTO outbox (message_id, kind, topic, payload, created_at) VALUES ('m-gone', 'glucose', 'g', "
            "x'00', '2026-10-01T07:00:00')"
        )
        db.conn.execute("DELETE FROM outbox WHERE message_id = 'm-gone'")
    before = {r["message_id"]: r for r in db.query("SELECT * FROM outbox")}
    db.close()

    store = make_store(tmp_path)  # opening applies 0007
    assert "0007_outbox_state_apart" in [m.name for m in MIGRATIONS.applied(store.db)]  # (and any later one)
    after = {r["message_id"]: r for r in store.query(f"SELECT * FROM {MESSAGES}")}
    assert set(after) == set(before)
    for message_id, old in before.items():
        new = after[message_id]
        for column in ("seq", "kind", "attempts", "created_at", "sent_at", "acked_at", "parked_reason"):
            assert new[column] == old[column], (message_id, column)
        assert new["state"] == ("pending" if old["state"] == "sent" else old["state"])  # 0011: in flight in memory
        if old["state"] == "acked":
            assert new["payload"] is None and new["topic"] is None  # an acked message's body is not kept
        else:
            assert (new["topic"], new["payload"], new["body_ref"], new["properties"]) == (
                old["topic"], old["payload"], old["body_ref"], old["properties"])  # fmt: skip
    assert after["m-pending"]["record_ref"] is None  # readings name their messages
    assert after["m-parked"]["record_ref"] == after["m-chunk"]["record_ref"] == "capture:c1"
    assert after["m-event"]["record_ref"] == "event:"
    outbox = Outbox(store)
    assert (
        outbox.stats().counts
        == scanned_counts(store)
        == {
            "glucose": {"pending": 3, "acked": 1},
            "capture": {"parked": 1},
            "image_chunk": {"pending": 1},
            "event": {"acked": 1},
        }
    )
    # The lifecycle goes on: the claim sends in seq order, bodies included.
    claimed = outbox.claim_batch(10)
    assert [m.message_id for m in claimed] == ["m-pending", "m-sent", "m-requeued", "m-chunk"]
    assert claimed[0].payload == b'{"v":1}' and claimed[3].body_ref == "image:ab:0:10"
    assert claimed[3].properties == {"index": "0"} and claimed[2].attempts == 3
    assert outbox.ack(["m-requeued"]).applied == 1
    add_readings(store, [reading(1)])
    new_seq = store.scalar("SELECT max(seq) FROM outbox")
    assert new_seq == 9  # after m-gone's 8
    assert outbox.stats().counts == scanned_counts(store)


# -- claim, send and ack touch only the narrow row ---------------------------------------------------------------
def payload_tables(store: Store) -> list[str]:
    """The outbox's tables that hold payloads (whatever the schema calls them)."""
    tables = [r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [t for t in tables if t.startswith("outbox") and "payload" in {c.name for c in store.db[t].columns}]


@contextmanager
def payload_rows_frozen(store: Store) -> Iterator[list[str]]:
    """Any UPDATE or DELETE of a payload row fails (temporary triggers); yields the statements run."""
    statements: list[str] = []
    tables = payload_tables(store)
    assert tables
    for table in tables:
        for op in ("UPDATE", "DELETE"):
            store.db.execute(
                f"CREATE TEMP TRIGGER no_{op.lower()}_{table} BEFORE {op} ON main.{table} "
                f"BEGIN SELECT RAISE(ABORT, 'a payload row was rewritten'); END"
            )
    store.db.conn.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        store.db.conn.set_trace_callback(None)
        for table in tables:
            for op in ("update", "delete"):
                store.db.execute(f"DROP TRIGGER temp.no_{op}_{table}")


def test_claim_ack_requeue_and_park_never_rewrite_a_payload_row(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 9)])
    outbox = Outbox(store)
    with payload_rows_frozen(store) as statements:
        first = outbox.claim_batch(5)
        outbox.ack([m.message_id for m in first[:2]])
        outbox.requeue([first[2].message_id])
        outbox.park(first[3].message_id, "too large")
        outbox.retry_parked()
        outbox.requeue_in_flight()
        again = outbox.claim_batch(10)
        outbox.ack([m.message_id for m in again])
    writes = [s for s in statements if s.lstrip().upper().startswith(("UPDATE", "DELETE", "INSERT"))]
    assert writes and all(" outbox_bodies" not in s for s in writes)
    assert outbox.stats().counts == {"glucose": {"acked": 8}}


# -- counts maintained, never scanned ----------------------------------------------------------------------------
class OutboxWalk(RuleBasedStateMachine):
    """Any sequence of enqueue / claim / ack / requeue / park / retry / restart / prune keeps the maintained counts
    equal to the counts a scan finds, never claims a message in flight again, and leaves no pending message behind
    the claims."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="cg-walk-"))
        self.clock = FakeClock(OLD)
        self.store = make_store(self.dir, clock=self.clock)
        self.outbox = Outbox(self.store)
        self.seq = 0
        self.sent: list[str] = []
        self.in_flight: set[str] = set()
        """The messages the draining outbox holds in flight, by this model."""

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(n=st.integers(1, 6))
    def add_readings(self, n: int) -> None:
        add_readings(self.store, [reading(self.seq + i) for i in range(1, n + 1)])
        self.seq += n

    @rule()
    def add_event(self) -> None:
        add_event(self.store, "device_connected", "meter connected")

    @rule(size=st.integers(1, 3000))
    def add_capture(self, size: int) -> None:
        store_capture(self.store, random.Random(size).randbytes(size), chunk_size=1024)

    @rule(n=st.integers(1, 10))
    def claim(self, n: int) -> None:
        claimed = [m.message_id for m in self.outbox.claim_batch(n)]
        assert not set(claimed) & self.in_flight, "a message in flight was claimed again"
        self.in_flight |= set(claimed)
        self.sent += claimed

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.sent), max_size=8))
        self.outbox.ack([*ids, "f" * 32])
        self.in_flight -= set(ids)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def requeue_or_park(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(self.sent))
        if data.draw(st.booleans()):
            self.outbox.requeue([message_id])
        else:
            self.outbox.park(message_id, "refused")
        self.in_flight.discard(message_id)

    @rule(elsewhere=st.booleans())
    def retry(self, elsewhere: bool) -> None:
        (Outbox(self.store) if elsewhere else self.outbox).retry_parked()  # the CLI has an outbox of its own

    @rule(lost=st.booleans())
    def restart(self, lost: bool) -> None:
        if lost:  # the process ended: memory gone
            self.outbox = Outbox(self.store)
        else:
            self.outbox.requeue_in_flight()
        self.in_flight.clear()

    @rule()
    def claim_everything_after_a_look_behind(self) -> None:
        self.clock.mono += outbox_module.LOOK_BEHIND_S
        self.claim(1_000_000)
        waiting = {r["message_id"] for r in self.store.query("SELECT message_id FROM outbox WHERE state = 'pending'")}
        assert waiting == self.in_flight, "a pending message was left behind the claims"

    @rule(days=st.integers(0, 200))
    def prune(self, days: int) -> None:
        self.clock.now = OLD + timedelta(days=days)
        retention.prune(self.store, 90, chunk=3)

    @invariant()
    def counts_are_maintained(self) -> None:
        assert self.outbox.stats().counts == scanned_counts(self.store)
        acked = sum(by_state.get("acked", 0) for by_state in scanned_counts(self.store).values())
        assert self.outbox.ack_activity()[0] == acked

    @invariant()
    def in_flight_is_pending_and_held_once(self) -> None:
        assert self.outbox.in_flight == len(self.in_flight)
        assert all(self.outbox.state_of(m) == outbox_module.IN_FLIGHT for m in self.in_flight)
        stored = {r["message_id"]: r["state"] for r in self.store.query("SELECT message_id, state FROM outbox")}
        assert all(stored[m] == "pending" for m in self.in_flight)


TestOutboxWalk = OutboxWalk.TestCase
TestOutboxWalk.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)


# -- the prune: bounded chunks, bodies dropped once acked -----------------------------------------------------------
@contextmanager
def deletions_per_transaction(store: Store) -> Iterator[dict[tuple[int, str], int]]:
    """Rows deleted per (transaction number, table), counted by temporary triggers while the block runs."""
    commits = [0]

    def trace(statement: str) -> None:
        if statement.strip().upper() in ("COMMIT", "END"):
            commits[0] += 1

    conn: sqlite3.Connection = store.db.conn
    conn.create_function("txn_number", 0, lambda: commits[0])
    conn.execute("CREATE TEMP TABLE deleted_rows (txn INTEGER, tbl TEXT)")
    existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables = [t for t in ("readings", "captures", "outbox", "outbox_bodies", "events", "sessions") if t in existing]
    for table in tables:
        conn.execute(
            f"CREATE TEMP TRIGGER count_{table} AFTER DELETE ON main.{table} "
            f"BEGIN INSERT INTO deleted_rows VALUES (txn_number(), '{table}'); END"
        )
    conn.set_trace_callback(trace)
    found: dict[tuple[int, str], int] = {}
    try:
        yield found
    finally:
        conn.set_trace_callback(None)
        for row in conn.execute("SELECT txn, tbl, count(*) FROM temp.deleted_rows GROUP BY txn, tbl"):
            found[(row[0], row[1])] = row[2]
        for table in tables:
            conn.execute(f"DROP TRIGGER temp.count_{table}")
        conn.execute("DROP TABLE temp.deleted_rows")


def test_prune_deletes_in_bounded_chunks(tmp_path: Path) -> None:
    clock = FakeClock(OLD)
    store = make_store(tmp_path, clock=clock)
    added = add_readings(store, [reading(s) for s in range(1, 1101)])
    message_ids = [r["message_id"] for r in store.query("SELECT message_id FROM readings")]
    confirm(store, message_ids)
    for i in range(12):
        add_event(store, "device_connected", f"meter {i} connected")
    clock.now = T0
    with deletions_per_transaction(store) as deleted:
        result = retention.prune(store, 90)
    assert result.readings == added.added == 1100 and result.outbox == 1100
    assert result.events == 12
    per_table: dict[str, int] = {}
    for (_txn, table), n in deleted.items():
        per_table[table] = per_table.get(table, 0) + n
    assert per_table["readings"] == per_table["outbox"] == 1100
    assert max(deleted.values()) <= 500, sorted(deleted.items())
    assert store.scalar("SELECT count(*) FROM readings") == 0


def test_a_pass_is_bounded_and_passes_run_until_done(tmp_path: Path) -> None:
    clock = FakeClock(OLD)
    store = make_store(tmp_path, clock=clock)
    add_readings(store, [reading(s) for s in range(1, 31)])
    keep = add_readings(store, [reading(s) for s in range(31, 36)])  # never confirmed: kept whatever their age
    confirm(store, [r["message_id"] for r in store.query("SELECT message_id FROM readings LIMIT 30")])
    capture_id, meta, chunks = store_capture(store, b"photo-" * 2000, chunk_size=1024)  # 12 chunks
    confirm(store, [meta, *chunks])
    clock.now = T0
    pruner = retention.Pruner(store, 90, chunk=4)
    with deletions_per_transaction(store) as deleted:
        passes = 0
        while pruner.run_pass():
            passes += 1
    assert max(deleted.values()) <= 4
    assert passes >= 30 // 4
    assert (pruner.result.readings, pruner.result.captures, pruner.result.image_files) == (30, 1, 1)
    assert store.scalar("SELECT count(*) FROM readings") == keep.added == 5
    assert store.scalar("SELECT count(*) FROM outbox WHERE record_ref = ?", [f"capture:{capture_id}"]) == 0
    assert Outbox(store).stats().counts == scanned_counts(store) == {"glucose": {"pending": 5}}


def test_acked_bodies_go_at_the_prune_whatever_their_age_and_unsent_ones_stay(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 6)])
    outbox = Outbox(store)
    claimed = outbox.claim_batch(3)
    outbox.ack([m.message_id for m in claimed[:2]])
    assert store.scalar("SELECT count(*) FROM outbox_bodies") == 5  # the ack itself leaves bodies alone
    result = retention.prune(store, 90)  # nothing is old: only the acked bodies go
    assert (result.readings, result.outbox, result.bodies) == (0, 0, 2)
    assert [outbox.body_of(m.message_id) for m in claimed[:2]] == [None, None]
    assert json.loads(outbox.body_of(claimed[2].message_id) or b"")["message_id"] == claimed[2].message_id
    assert outbox.state_of(claimed[0].message_id) == "acked"  # the record's message is kept, without its body
    assert store.scalar("SELECT count(*) FROM outbox_bodies") == 3
    outbox.requeue_in_flight()
    assert [m.payload is not None for m in outbox.claim_batch(10)] == [True, True, True]


@pytest.mark.parametrize("synchronised", [True, False])
def test_the_retention_task_drops_acked_bodies_even_on_an_untrusted_clock(tmp_path: Path, synchronised: bool) -> None:
    from gateway.retention import RetentionTask

    clock = FakeClock(OLD, synchronised=synchronised)
    store = make_store(tmp_path, clock=clock)
    add_readings(store, [reading(1), reading(2)])
    confirm(store, [r["message_id"] for r in store.query("SELECT message_id FROM readings")])
    clock.now = T0
    result = RetentionTask(store, 90).run_once()
    assert result.bodies == (0 if synchronised else 2)  # synchronised: the readings went, bodies with them
    assert result.readings == (2 if synchronised else 0)
    assert store.scalar("SELECT count(*) FROM outbox_bodies") == 0


# -- migration 0010: the state index holds only unacked messages -----------------------------------------------
def _plan(store: Store, sql: str, params: Sequence[object]) -> str:
    return " | ".join(row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())


def test_migration_0010_state_index_holds_only_unacked_messages(tmp_path: Path) -> None:
    """A store as 0001-0008 left it (the full (state, seq) index), messages in every state: 0010 replaces the
    index by one of the unacked messages only; the outbox's queries on the state use it; the lifecycle goes on."""
    db = Database(tmp_path / "gateway.db")
    MIGRATIONS.apply(db, stop_before="0010_outbox_unacked_index")
    assert "outbox_state_seq" in {i.name for i in db.table("outbox").indexes}
    db.close()
    store = make_store(tmp_path)  # opening applies 0010
    outbox = Outbox(store)
    add_readings(store, [reading(i) for i in range(1, 9)])
    ids = [m.message_id for m in outbox.claim_batch(6)]
    assert confirm(store, ids[:3]) == 3  # acked
    outbox.park(ids[3], "too large")  # parked; ids[4:6] sent; readings 7, 8 pending
    assert {i.name for i in store.db.table("outbox").indexes} >= {"outbox_unacked"}
    assert "outbox_state_seq" not in {i.name for i in store.db.table("outbox").indexes}
    # the acked messages have no entry in it
    indexed = store.scalar("SELECT count(*) FROM outbox INDEXED BY outbox_unacked WHERE state != 'acked'")
    assert indexed == 5 == store.scalar("SELECT count(*) FROM outbox WHERE +state != 'acked'")
    # the claims, the retry and the oldest unsent walk it (not the whole history)
    for sql, params in [
        (outbox_module._CLAIM_AHEAD, [0, 500]),
        (outbox_module._CLAIM_BEHIND, [10**9, 500]),
        (outbox_module._RETRY, []),
        (f"SELECT min(seq) FROM outbox WHERE state = 'pending' AND {outbox_module.UNACKED}", []),
    ]:
        assert "outbox_unacked" in _plan(store, sql, params), sql
    assert outbox.stats().counts == scanned_counts(store)
    assert outbox.requeue_in_flight() == 2  # (confirm acked ids[:3] with an outbox of its own)
    assert outbox.retry_parked() == 1
    unsent = [r["message_id"] for r in store.query("SELECT message_id FROM readings WHERE sequence IN (7, 8)")]
    assert {m.message_id for m in outbox.claim_batch(10)} == {*ids[3:], *unsent}


def test_ack_and_requeue_of_any_size_apply_exactly_the_named_messages(tmp_path: Path) -> None:
    """Acks and requeues go in IN lists padded with NULLs to a few fixed sizes (parts of at most 512): every size
    applies exactly the messages named, and an ack still reports those never sent."""
    store = make_store(tmp_path)
    outbox = Outbox(store)
    add_readings(store, [reading(i) for i in range(1, 1302)])
    sent = [m.message_id for m in outbox.claim_batch(1300)]
    outbox.requeue([outbox.claim_batch(1)[0].message_id])  # one more, sent once and requeued
    add_readings(store, [reading(2000)])  # and one never sent
    (unsent,) = [r["message_id"] for r in store.query("SELECT message_id FROM readings WHERE sequence = 2000")]
    assert outbox.requeue(sent[:700]) == 700  # two parts (512 + 188 padded to 256)
    assert outbox.requeue(sent[:700]) == 0
    result = outbox.ack([*sent[:3], *sent[700:1300], unsent, "no-such-id"])  # 605 named: 512 + 93 (padded 128)
    assert result.applied == 603  # sent[:3] were requeued after being sent: their ack still counts
    assert result.never_sent == (unsent,)
    assert outbox.stats().counts == scanned_counts(store) == {"glucose": {"acked": 603, "pending": 699}}


# -- migration 0011: in flight in memory, the ack guard one mark -------------------------------------------------
def test_migration_0011_sent_rows_go_back_to_the_queue_and_their_acks_still_count(tmp_path: Path) -> None:
    db = Database(tmp_path / "gateway.db")
    MIGRATIONS.apply(db, stop_before="0011_outbox_sent_in_memory")
    rows = [  # (message_id, state, attempts, sent_at)
        ("m-never", "pending", 0, None),
        ("m-sent", "sent", 1, "2026-11-01T08:00:00.000+00:00"),
        ("m-requeued", "pending", 2, "2026-11-01T08:01:00.000+00:00"),
        ("m-new", "pending", 0, None),
    ]
    with db.conn:
        for message_id, state, attempts, sent_at in rows:
            seq = db.conn.execute(
                "INSERT INTO outbox (message_id, kind, created_at, state, attempts, sent_at) "
                "VALUES (?, 'glucose', '2026-11-01T07:00:00.000+00:00', ?, ?, ?)",
                [message_id, state, attempts, sent_at],
            ).lastrowid
            db.conn.execute("INSERT INTO outbox_bodies (seq, topic, payload) VALUES (?, 'glucose', x'7b7d')", [seq])
    db.close()
    store = make_store(tmp_path)  # opening applies 0011
    assert scanned_counts(store) == {"glucose": {"pending": 4}} == Outbox(store).stats().counts
    seqs = {r["message_id"]: r["seq"] for r in store.query("SELECT message_id, seq FROM outbox")}
    assert store.get_kv(outbox_module.SENT_THROUGH_KEY) == str(seqs["m-requeued"])
    # a late ack for what went out before the upgrade counts; one for a message never sent does not
    result = Outbox(store).ack(["m-sent", "m-requeued", "m-new"])
    assert (result.applied, result.never_sent) == (2, ("m-new",))
    assert [m.message_id for m in Outbox(store).claim_batch(10)] == ["m-never", "m-new"]


def test_migration_0011_on_a_store_that_never_sent_leaves_no_mark(tmp_path: Path) -> None:
    db = Database(tmp_path / "gateway.db")
    MIGRATIONS.apply(db, stop_before="0011_outbox_sent_in_memory")
    db.close()
    store = make_store(tmp_path)
    assert store.get_kv(outbox_module.SENT_THROUGH_KEY) is None
    add_readings(store, [reading(1)])
    (message_id,) = [r["message_id"] for r in store.query("SELECT message_id FROM outbox")]
    assert Outbox(store).ack([message_id]).never_sent == (message_id,)
