"""Issue 15: downlink messages are untrusted input (real mosquitto, the real forwarder, a real store).

#1  poison messages (leap second, lower-case RFC 3339, year 0, a lone surrogate, a 5,000-digit number,
    100,000 nested ``[``) neither stop the forwarder nor cost the valid referrals published with them;
#2  an ack naming a message never sent does not confirm it;
#9  ids that could not be acknowledged at ``/referrals/<id>`` or would forge a log line are dead-lettered;
    a referral naming one patient's photo and another patient's id is held; an ack larger than the
    Maximum Packet Size announced in CONNECT is never delivered to us.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from support.broker import PREFIX, ForwarderRunner, gateway_config, wait_until
from support.factories import make_store, reading, store_capture

from gateway.clock import SystemClock
from gateway.store import referrals
from gateway.store.outbox import IN_FLIGHT, Outbox
from gateway.store.readings import add_readings
from gateway.wire import contract

ACK, REFERRAL = PREFIX + "ack", PREFIX + "cmd/referral"


def referral(referral_id: str, **fields: Any) -> bytes:
    doc = {"schema": "cg.referral/1", "referral_id": referral_id, "decision": "refer_urgent", "patient_id": "P-0042"}
    doc.update(fields)
    return json.dumps(doc).encode()  # ensure_ascii: a lone surrogate travels as the JSON escape \ud800


def stored_ids(store) -> set[str]:
    return {r.referral_id for r in referrals.list_referrals(store, limit=1000)}


def dead_letters(store) -> list[dict[str, Any]]:
    return store.query("SELECT topic, what, field, reason FROM downlink_dead_letters ORDER BY id")


def test_poison_messages_neither_stop_the_forwarder_nor_lose_their_neighbours(tmp_path, broker, receiver_factory):
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    receiver = receiver_factory(broker)
    urgent = [(REFERRAL, referral(f"urgent-{i}")) for i in range(9)]
    odd_but_valid = [
        (REFERRAL, referral("leap-second", decided_at="2026-12-31T23:59:60Z")),
        (REFERRAL, referral("lower-case", decided_at="2026-11-23t09:00:00z")),
    ]
    poison = [
        (REFERRAL, referral("year-zero", decided_at="0000-11-23T09:00:00Z")),
        (REFERRAL, referral("surrogate", note="\ud800")),
        (ACK, b'{"schema": "cg.ack/1", "message_ids": [' + b"1" * 5000 + b"]}"),
        (ACK, b"[" * 100_000),
    ]
    others = odd_but_valid + poison
    # the same batch, interleaved: every other message is a valid urgent referral
    batch = [m for pair in zip(urgent, others + [None] * (len(urgent) - len(others)), strict=True) for m in pair if m]
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=broker.port), store) as run:
        wait_until(lambda: run.forwarder.state == "online")
        for topic, payload in batch:
            receiver.publish_raw(topic, payload)
        expected = {f"urgent-{i}" for i in range(9)} | {"leap-second", "lower-case"}
        wait_until(lambda: stored_ids(store) >= expected or not run.alive, what="the valid referrals")
        assert run.alive and run.error is None, "the forwarder stopped"
        wait_until(lambda: len(dead_letters(store)) == len(poison), what="the poison dead-lettered")
        assert run.forwarder.counters["connects"] == 1  # the same connection throughout
    assert stored_ids(store) == expected
    leap = referrals.get_referral(store, "leap-second")
    assert leap is not None and leap.decided_at.startswith("2026-12-31T23:59:59.999")
    reasons = {(d["what"], d["field"]) for d in dead_letters(store)}
    assert reasons == {("referral", "decided_at"), ("referral", "note"), ("ack", "(json)")}


def test_an_ack_for_a_message_never_sent_does_not_confirm_it(tmp_path, broker, receiver_factory, caplog):
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    add_readings(store, [reading(1), reading(2)])
    outbox = Outbox(store)
    receiver = receiver_factory(broker)
    receiver.ack_enabled = False
    caplog.set_level(logging.INFO)
    config = gateway_config(tmp_path / "gw", port=broker.port, inflight_window=1, ack_timeout_s=600)
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: run.forwarder.counters["sent"] == 1)
        (sent,) = run.forwarder._inflight  # a window of one: the first in seq order
        (queued,) = [r["message_id"] for r in store.query("SELECT message_id FROM outbox WHERE message_id != ?",
                                                          [sent])]  # fmt: skip
        receiver.publish_raw(ACK, contract.ack_payload([queued]))  # a platform bug, or a forged ack
        receiver.ack_enabled = True
        receiver.publish_raw(ACK, contract.ack_payload([sent]))  # same topic: delivered after the first
        wait_until(lambda: outbox.state_of(sent) == "acked", what="the real ack applied")
        assert outbox.state_of(queued) != "acked"
        assert run.forwarder.counters["ack_not_sent"] == 1
        # it goes out as usual, and the platform confirms it for real
        wait_until(lambda: outbox.state_of(queued) == "acked", what="the queued message sent and confirmed")
    assert receiver.counts()["readings"] == 2
    assert any(queued in r.getMessage() and "never sent" in r.getMessage() for r in caplog.records)
    assert store.query("SELECT kind FROM events WHERE kind = 'ack_for_unsent'")


def test_ids_that_cannot_be_acknowledged_or_forge_a_log_line_are_dead_lettered(
    tmp_path, broker, receiver_factory, caplog
):
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    receiver = receiver_factory(broker)
    caplog.set_level(logging.INFO)
    bad_ids = ["a/b", "..", "x\nERROR gateway.daemon: FORGED LINE", "ok-id\r"]
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=broker.port), store) as run:
        wait_until(lambda: run.forwarder.state == "online")
        for bad in bad_ids:
            receiver.publish_raw(REFERRAL, referral(bad))
        receiver.publish_raw(REFERRAL, referral("r.2026-11:ok_1"))  # every allowed character class
        wait_until(lambda: "r.2026-11:ok_1" in stored_ids(store), what="the valid one")
        assert stored_ids(store) == {"r.2026-11:ok_1"}  # the others came first (one topic: in order)
        wait_until(lambda: len(dead_letters(store)) == len(bad_ids), what="the bad ids dead-lettered")
    assert {d["field"] for d in dead_letters(store)} == {"referral_id"}
    logged = [r.getMessage() for r in caplog.records]
    assert not any("FORGED LINE" in line or "\n" in line or "\r" in line for line in logged)


def test_a_referral_naming_another_patients_photo_is_held(tmp_path, broker, receiver_factory):
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    capture_id, _message, _chunks = store_capture(store, b"\xff\xd8 photo of P-1 \xff\xd9")  # patient P-1
    receiver = receiver_factory(broker)
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=broker.port), store) as run:
        wait_until(lambda: run.forwarder.state == "online")
        receiver.publish_raw(REFERRAL, referral("mixed-up", capture_id=capture_id, patient_id="P-OTHER"))
        receiver.publish_raw(REFERRAL, referral("consistent", capture_id=capture_id, patient_id="P-1"))
        wait_until(lambda: stored_ids(store) == {"mixed-up", "consistent"}, what="both stored")
    # shown as neither patient's; the consistent one is P-1's
    assert referrals.list_referrals(store, patient_id="P-OTHER") == []
    assert [r.referral_id for r in referrals.list_referrals(store, patient_id="P-1")] == ["consistent"]
    held = referrals.get_referral(store, "mixed-up")
    assert held is not None and held.held_reason == "patient_mismatch" and held.patient_id is None
    assert (held.named_patient_id, held.capture_patient_id) == ("P-OTHER", "P-1")


def test_an_ack_over_the_announced_maximum_packet_size_never_reaches_us(tmp_path, broker, receiver_factory):
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    add_readings(store, [reading(1), reading(2)])
    outbox = Outbox(store)
    receiver = receiver_factory(broker)
    receiver.ack_enabled = False
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=broker.port, ack_timeout_s=600), store) as run:
        wait_until(lambda: run.forwarder.counters["sent"] == 2)
        first, second = [r["message_id"] for r in store.query("SELECT message_id FROM outbox ORDER BY seq")]
        # valid per schema (an ack may carry other fields), 2 MB: parsed whole, it used to confirm `first`
        padded = {"schema": "cg.ack/1", "message_ids": [first], "padding": "x" * 2_000_000}
        receiver.publish_raw(ACK, json.dumps(padded).encode())
        receiver.publish_raw(ACK, contract.ack_payload([second]))
        wait_until(lambda: outbox.state_of(second) == "acked", what="the small ack applied")
        assert run.forwarder.outbox.state_of(first) == IN_FLIGHT
        assert run.forwarder.counters["downlink_received"] == 1  # the broker dropped the big one
