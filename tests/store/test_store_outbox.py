"""The outbox lifecycle: pending -> (in flight, in memory) -> acked, timeouts, parking, order, the ack guard."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from support.factories import T0, make_store, reading

from gateway.clock import FakeClock
from gateway.store.outbox import (
    _SENT_THROUGH,
    GUARDS,
    IN_FLIGHT,
    LOOK_BEHIND_S,
    SENT_THROUGH_KEY,
    TRANSITIONS,
    AckResult,
    Outbox,
    _where_from,
)
from gateway.store.readings import add_readings


def test_claim_is_in_order_and_bounded(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 8)])
    outbox = Outbox(store)
    first = outbox.claim_batch(3)
    second = outbox.claim_batch(10)
    assert [m.seq for m in first] + [m.seq for m in second] == sorted(m.seq for m in first + second)
    assert (len(first), len(second)) == (3, 4)
    assert outbox.claim_batch(5) == []
    assert all(m.attempts == 1 for m in first)


def test_only_the_platform_ack_confirms_and_acks_are_idempotent(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(1), reading(2)])
    outbox = Outbox(store)
    a, b = outbox.claim_batch(2)
    assert outbox.ack([a.message_id, a.message_id, "f" * 32]) == AckResult(1)
    assert outbox.ack([a.message_id]) == AckResult(0)
    assert outbox.state_of(a.message_id) == "acked"
    assert outbox.state_of(b.message_id) == IN_FLIGHT
    assert Outbox(store).state_of(b.message_id) == "pending"  # in flight is the draining outbox's memory


def test_timeout_requeues_and_the_message_goes_out_again_first(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(1), reading(2), reading(3)])
    outbox = Outbox(store)
    first = outbox.claim_batch(1)[0]
    assert outbox.requeue([first.message_id]) == 1
    again = outbox.claim_batch(1)[0]
    assert again.message_id == first.message_id
    assert again.attempts == 2


def test_restart_requeues_everything_in_flight(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 5)])
    outbox = Outbox(store)
    outbox.claim_batch(3)
    assert outbox.requeue_in_flight() == 3
    assert outbox.stats().counts == {"glucose": {"pending": 4}}


def test_parked_messages_stay_stored_and_can_be_retried(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(1), reading(2)])
    outbox = Outbox(store)
    big, _small = outbox.claim_batch(2)
    outbox.park(big.message_id, "broker refused: packet too large")
    stats = outbox.stats()
    assert stats.parked == 1 and stats.total_unsent == 1
    assert outbox.parked()[0].parked_reason == "broker refused: packet too large"
    assert outbox.claim_batch(5) == []
    assert outbox.retry_parked() == 1
    assert [m.message_id for m in outbox.claim_batch(5)] == [big.message_id]


def test_a_late_ack_for_a_requeued_message_still_confirms_it(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(1)])
    outbox = Outbox(store)
    msg = outbox.claim_batch(1)[0]
    outbox.requeue([msg.message_id])
    assert outbox.ack([msg.message_id]) == AckResult(1)
    assert outbox.claim_batch(1) == []


def test_an_ack_for_a_message_never_sent_is_not_applied(tmp_path: Path) -> None:
    """Issue 15 #2: a queued message the platform never got must not be confirmed (retention would delete it)."""
    store = make_store(tmp_path)
    add_readings(store, [reading(1), reading(2)])
    outbox = Outbox(store)
    sent = outbox.claim_batch(1)[0]
    queued = store.scalar("SELECT message_id FROM outbox WHERE seq > ?", [sent.seq])
    result = outbox.ack([queued, sent.message_id])
    assert result == AckResult(applied=1, never_sent=(queued,))
    assert (outbox.state_of(queued), outbox.state_of(sent.message_id)) == ("pending", "acked")
    assert [m.message_id for m in outbox.claim_batch(5)] == [queued]  # still goes out


def test_transitions_table_drives_the_guarded_ack() -> None:
    # The one lifecycle table says which states an ack leaves, and its guard says "only if sent before".
    assert TRANSITIONS[("pending", "ack")] == "acked" and GUARDS[("pending", "ack")] == f"seq <= {_SENT_THROUGH}"
    assert _where_from("ack") == f"((state = 'pending' AND seq <= {_SENT_THROUGH}))"


def test_wall_clock_jump_does_not_reorder_or_drop(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock=clock)
    add_readings(store, [reading(1)])
    clock.now = T0 + timedelta(days=3 * 365)  # NTP syncs late: years forward
    add_readings(store, [reading(2)])
    clock.now = T0 - timedelta(days=365)
    add_readings(store, [reading(3)])
    claimed = Outbox(store).claim_batch(10)
    assert [m.seq for m in claimed] == sorted(m.seq for m in claimed)
    assert len(claimed) == 3


def test_transition_table_is_the_documented_lifecycle() -> None:
    # only stored states: in flight is the draining outbox's memory
    assert TRANSITIONS == {
        ("pending", "ack"): "acked",
        ("pending", "park"): "parked",
        ("parked", "retry"): "pending",
    }


def test_a_claim_writes_no_message_row_only_the_sent_through_mark(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 6)])
    outbox = Outbox(store)
    store.db.execute(
        "CREATE TEMP TRIGGER no_claim_write BEFORE UPDATE ON main.outbox "
        "BEGIN SELECT RAISE(ABORT, 'a claim rewrote a message row'); END"
    )
    claimed = outbox.claim_batch(3)
    store.db.execute("DROP TRIGGER temp.no_claim_write")
    assert store.get_kv(SENT_THROUGH_KEY) == str(claimed[-1].seq)
    assert {row["state"] for row in store.query("SELECT state FROM outbox")} == {"pending"}


def test_the_ack_guard_outlives_a_restart(tmp_path: Path) -> None:
    """A platform ack for a message sent before a restart arrives after it: the mark, not memory, accepts it."""
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 5)])
    before = Outbox(store)
    sent = before.claim_batch(2)
    after = Outbox(store)  # a new run: nothing in flight
    unsent = [m.message_id for m in after.claim_batch(10)][2:]  # everything again (sent ones first), then lost
    later = Outbox(store)
    assert later.ack([sent[1].message_id]) == AckResult(1)
    # ...the mark was raised by the second run's claim; a message above it was never sent
    add_readings(store, [reading(9)])
    (newest,) = [r["message_id"] for r in store.query("SELECT message_id FROM readings WHERE sequence = 9")]
    assert later.ack([*unsent, newest]) == AckResult(2, never_sent=(newest,))


def test_a_claim_never_lowers_the_mark(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 5)])
    top = Outbox(store).claim_batch(4)[-1].seq
    assert Outbox(store).claim_batch(1)[0].seq < top  # a new run starts from the first pending message
    assert store.get_kv(SENT_THROUGH_KEY) == str(top)


def test_messages_put_back_go_first_and_nothing_in_flight_goes_twice(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 11)])
    outbox = Outbox(store)
    first = outbox.claim_batch(5)
    back = [first[1].message_id, first[3].message_id]
    assert outbox.requeue(back) == 2
    again = outbox.claim_batch(3)
    assert [m.message_id for m in again[:2]] == back
    assert again[2].seq > first[4].seq  # then on ahead of the cursor, skipping what is still in flight
    rest = outbox.claim_batch(10)
    assert [m.seq for m in rest] == sorted(m.seq for m in rest) and rest[0].seq > again[2].seq
    assert len({m.message_id for m in first + again + rest}) == 10 == len(first) + len(again) + len(rest) - 2
    assert outbox.in_flight == 10 and outbox.claim_batch(10) == []


def test_a_message_retried_by_another_process_is_claimed_once_the_drain_looks_behind(tmp_path: Path) -> None:
    """The CLI retries a parked message (another Outbox) while the forwarder has messages in flight: its claims
    read ahead of their cursor, and look behind it too every LOOK_BEHIND_S."""
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock=clock)
    add_readings(store, [reading(s) for s in range(1, 5)])
    drain = Outbox(store)
    refused, *others = drain.claim_batch(4)
    drain.park(refused.message_id, "broker refused the message: too large")
    assert drain.claim_batch(10) == []  # the others still in flight
    assert Outbox(store).retry_parked() == 1  # the CLI, its own outbox
    assert drain.claim_batch(10) == []  # not yet looked behind
    clock.advance(LOOK_BEHIND_S)
    assert [m.message_id for m in drain.claim_batch(10)] == [refused.message_id]
    assert drain.claim_batch(10) == [] and drain.in_flight == 4 == len(others) + 1


def test_with_nothing_in_flight_a_claim_starts_from_the_first_pending_message(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(s) for s in range(1, 4)])
    drain = Outbox(store)
    first, second, _ = drain.claim_batch(3)
    drain.park(first.message_id, "too large")
    drain.ack([m.message_id for m in drain.claim_batch(0)] + [second.message_id, _.message_id])
    Outbox(store).retry_parked()
    assert [m.message_id for m in drain.claim_batch(10)] == [first.message_id]  # at once: nothing in flight
