"""Downlink: platform acks and referral decisions; malformed messages are dead-lettered without harming
the link; the retained status goes online on connect and the Last Will says offline."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from support.broker import PREFIX, ForwarderRunner, gateway_config, gateway_state, gateway_status, wait_until
from support.factories import make_store, reading

from gateway.clock import SystemClock
from gateway.records import Referral
from gateway.store import referrals
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings
from gateway.store.sessions import start_session
from gateway.wire import contract


def test_referral_is_validated_stored_once_and_listed(tmp_path, broker, receiver_factory) -> None:
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    start_session(store, "retina", patient_id="P-0042", operator="tom")  # a patient this clinic has seen
    receiver = receiver_factory(broker)
    referral = Referral(
        referral_id="ref-1", decision="refer_urgent", capture_id="c" * 32, patient_id="P-0042",
        note="PDR suspected", grader="dr-li", decided_at=datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
    )  # fmt: skip
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=broker.port), store) as run:
        wait_until(lambda: run.forwarder.state == "online")
        wait_until(lambda: gateway_status(receiver) is not None, what="retained online status")
        assert receiver.send_referral(PREFIX, referral)
        assert receiver.send_referral(PREFIX, referral)  # the platform sends it again: stored once
        wait_until(lambda: referrals.list_referrals(store), what="referral stored")
    (row,) = referrals.list_referrals(store, patient_id="P-0042")
    assert (row.decision, row.capture_id, row.grader) == ("refer_urgent", "c" * 32, "dr-li")
    assert referrals.count_unseen(store) == 1
    assert referrals.mark_seen(store, "ref-1") and not referrals.mark_seen(store, "ref-1")
    assert referrals.list_referrals(store, unseen_only=True) == []


def test_malformed_downlink_is_dead_lettered_and_the_link_keeps_working(
    tmp_path, broker, receiver_factory, caplog
) -> None:
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    add_readings(store, [reading(1)])
    receiver = receiver_factory(broker)
    receiver.ack_enabled = False
    caplog.set_level(logging.INFO)
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=broker.port, ack_timeout_s=600), store) as run:
        wait_until(lambda: run.forwarder.counters["sent"] == 1)
        garbage = [
            (PREFIX + "ack", b"\xff\xfe not json"),
            (PREFIX + "ack", b'{"schema": "cg.ack/1", "message_ids": "all"}'),
            (PREFIX + "ack", b"[1, 2, 3]"),
            (PREFIX + "cmd/referral", b'{"schema": "cg.referral/1", "referral_id": "r2", "decision": "P-SECRET-9"}'),
            (PREFIX + "cmd/referral", b'{"schema": "cg.referral/1", "referral_id": "r3", "decision": "no_dr"}'),
            (PREFIX + "cmd/referral", b"{" * 100_000),
        ]
        for topic, payload in garbage:
            receiver.publish_raw(topic, payload)
        wait_until(lambda: run.forwarder.counters["dead_letters"] == len(garbage), what="all dead-lettered")
        # still the same connection, still applying acks
        message_id = store.scalar("SELECT message_id FROM outbox")
        receiver.publish_raw(PREFIX + "ack", contract.ack_payload([message_id]))
        wait_until(lambda: Outbox(store).state_of(message_id) == "acked")
        assert run.forwarder.state == "online" and run.alive
    assert referrals.list_referrals(store) == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "fails the contract" in logged
    assert "P-SECRET-9" not in logged  # no payload values in logs


def test_status_online_retained_and_last_will_offline(tmp_path, broker, receiver_factory) -> None:
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    receiver = receiver_factory(broker)
    # backoff of 1-2 s after the cut, so the receiver sees the will before the next online status
    config = gateway_config(tmp_path / "gw", port=broker.port, keepalive_s=5, backoff_initial_s=2.0, backoff_max_s=2.0)
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: gateway_state(receiver) == "online", what="online status")
        doc = gateway_status(receiver)
        contract.validate(contract.SCHEMA_STATUS, doc)
        assert doc["outbox_unsent"] == 0 and doc["clock_synchronised"] is True
        # the network dies without a DISCONNECT: the broker publishes our Last Will
        link = run.forwarder._link
        assert link is not None and link._client is not None
        link._client.socket().shutdown(2)
        wait_until(lambda: gateway_state(receiver) == "offline", timeout_s=20, what="last will")
        wait_until(lambda: gateway_state(receiver) == "online", what="back online after reconnect")
    # a clean stop publishes offline itself
    wait_until(lambda: gateway_state(receiver) == "offline", what="offline on clean stop")
