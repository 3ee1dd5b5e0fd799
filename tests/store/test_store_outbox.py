"""The outbox lifecycle table: pending -> sent -> acked, timeouts, parking, order."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from support.factories import T0, make_store, reading

from gateway.clock import FakeClock
from gateway.store.outbox import GUARDS, TRANSITIONS, AckResult, Outbox, _where_from
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
    assert outbox.state_of(b.message_id) == "sent"


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
    assert outbox.requeue_all_sent() == 3
    assert outbox.stats().counts == {"glucose": {"pending": 4}}


def test_parked_messages_stay_stored_and_can_be_retried(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    add_readings(store, [reading(1), reading(2)])
    outbox = Outbox(store)
    big, _small = outbox.claim_batch(2)
    outbox.park(big.message_id, "broker refused: packet too large")
    stats = outbox.stats()
    assert stats.parked == 1 and stats.total_unsent == 1
    assert outbox.parked()[0]["parked_reason"] == "broker refused: packet too large"
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
    queued = store.scalar("SELECT message_id FROM outbox WHERE state = 'pending'")
    result = outbox.ack([queued, sent.message_id])
    assert result == AckResult(applied=1, never_sent=(queued,))
    assert (outbox.state_of(queued), outbox.state_of(sent.message_id)) == ("pending", "acked")
    assert [m.message_id for m in outbox.claim_batch(5)] == [queued]  # still goes out


def test_transitions_table_drives_the_guarded_ack() -> None:
    # The one lifecycle table says which states an ack leaves, and its guard says "only if sent before".
    assert TRANSITIONS[("pending", "ack")] == "acked" and GUARDS[("pending", "ack")] == "sent_at IS NOT NULL"
    assert _where_from("ack") == "(state IN ('sent') OR (state = 'pending' AND sent_at IS NOT NULL))"


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
    assert TRANSITIONS[("pending", "claim")] == "sent"
    assert TRANSITIONS[("sent", "ack")] == "acked"
    assert TRANSITIONS[("sent", "timeout")] == "pending"
    assert ("acked", "claim") not in TRANSITIONS
