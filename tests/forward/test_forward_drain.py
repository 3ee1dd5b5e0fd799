"""Outbox -> real mosquitto -> reference receiver -> ack -> outbox, including outages.

Confirmation is the platform's ``ack``, never PUBACK; the receiver ends with exactly the N readings, none twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from support.broker import ForwarderRunner, gateway_config, wait_until
from support.factories import make_store, reading

from gateway.clock import SystemClock
from gateway.emulate.platform import ACK_BATCH_MAX_DEFAULT
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings


def _store(tmp_path: Path):
    return make_store(tmp_path / "gw", SystemClock("assume_synced"))


def _assert_exactly_once(receiver, store, n: int) -> None:
    rows = receiver.readings()
    ids = Counter(r["reading_id"] for r in rows)
    assert len(rows) == n, f"receiver has {len(rows)} readings, expected {n}"
    assert max(ids.values()) == 1, "a reading arrived twice"
    stored = {r["reading_id"] for r in store.query("SELECT reading_id FROM readings")}
    assert set(ids) == stored
    pairs = Counter((r["meter_id"], r["sequence"]) for r in rows)
    assert max(pairs.values()) == 1


def test_drains_in_order_and_confirms_only_on_platform_ack(tmp_path, broker, receiver_factory) -> None:
    store = _store(tmp_path)
    add_readings(store, [reading(i) for i in range(1, 121)])
    receiver = receiver_factory(broker)
    receiver.ack_enabled = False  # a platform that stores but has not confirmed yet
    outbox = Outbox(store)
    config = gateway_config(tmp_path / "gw", port=broker.port, ack_timeout_s=600, inflight_window=200)
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: receiver.counts()["readings"] == 120, what="120 readings at the receiver")
        # PUBACKs have all come back by now, but nothing is confirmed without the platform's ack
        wait_until(lambda: run.forwarder.counters["sent"] == 120)
        assert outbox.stats().counts["glucose"] == {"pending": 120}  # in flight is the forwarder's memory
        snap = run.forwarder.snapshot()
        assert snap["state"] == "online" and snap["in_flight"] == 120
        receiver.ack_enabled = True
        add_readings(store, [reading(121)])  # the next batch's ack carries only its own ids...
        wait_until(lambda: outbox.stats().counts["glucose"].get("acked") == 1)
        assert outbox.stats().counts["glucose"]["pending"] == 120  # ...so the first 120 are still unconfirmed
        assert run.forwarder.snapshot()["in_flight"] == 120
    sequences = [r["sequence"] for r in receiver.readings()]
    assert sequences == sorted(sequences)  # drained in outbox order


def test_broker_stopped_mid_drain_and_restarted(tmp_path, broker, receiver_factory) -> None:
    n = 600
    store = _store(tmp_path)
    add_readings(store, [reading(i) for i in range(1, n + 1)])
    receiver = receiver_factory(broker)
    outbox = Outbox(store)
    config = gateway_config(tmp_path / "gw", port=broker.port, inflight_window=20, ack_timeout_s=3)
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: receiver.counts()["readings"] >= 50, what="drain under way")
        broker.stop()
        wait_until(lambda: run.forwarder.state != "online", what="forwarder notices the outage")
        assert run.forwarder.snapshot()["last_error"]
        add_readings(store, [reading(i) for i in range(n + 1, n + 51)])  # intake goes on meanwhile
        broker.start()
        wait_until(lambda: outbox.stats().total_unsent == 0, timeout_s=60, what="outbox drained after restart")
        assert run.forwarder.state == "online"
    wait_until(lambda: receiver.counts()["readings"] >= n + 50)
    _assert_exactly_once(receiver, store, n + 50)


def test_receiver_offline_unconfirmed_messages_are_resent(tmp_path, broker, receiver_factory) -> None:
    store = _store(tmp_path)
    outbox = Outbox(store)
    db = tmp_path / "platform.db"
    first = receiver_factory(broker, db)
    first.stop()  # the platform is down; its persistent session keeps what arrives meanwhile (QoS 1)
    add_readings(store, [reading(i) for i in range(1, 81)])
    config = gateway_config(tmp_path / "gw", port=broker.port, ack_timeout_s=0.5)
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: run.forwarder.counters["resent_after_timeout"] >= 80, what="re-sends after ack timeout")
        assert outbox.stats().counts["glucose"].get("acked") is None
        receiver = receiver_factory(broker, db)  # back: gets the queued copies and the re-sends
        wait_until(lambda: outbox.stats().total_unsent == 0, what="all confirmed")
    wait_until(lambda: receiver.counts()["readings"] == 80)
    _assert_exactly_once(receiver, store, 80)
    assert receiver.counts()["duplicates"] > 0  # the re-sends did arrive, and were recognised


def test_a_platform_that_acks_each_message_on_its_own(tmp_path, broker, receiver_factory) -> None:
    """One ack per message (a platform that confirms each message as it stores it): every ack is applied, each
    message confirmed once; the gateway gathers the acks into fewer durable transactions."""
    n = 60
    store = _store(tmp_path)
    add_readings(store, [reading(i) for i in range(1, n + 1)])
    receiver = receiver_factory(broker, ack_batch_max=1)
    outbox = Outbox(store)
    config = gateway_config(tmp_path / "gw", port=broker.port, ack_timeout_s=600)
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: outbox.stats().counts["glucose"].get("acked") == n, what=f"{n} confirmed")
        assert run.forwarder.counters["downlink_received"] == n  # an ack message per message
        assert run.forwarder.counters["acked"] == n
        assert run.forwarder.counters["sent"] == n  # nothing sent twice
    _assert_exactly_once(receiver, store, n)


def test_the_receiver_command_takes_the_platform_ack_batch(tmp_path) -> None:
    from gateway.cli import build_parser
    from gateway.commands.receiver import _settings

    args = build_parser().parse_args(["receiver", "--port", "1884", "--ack-batch-max", "1"])
    settings, _prefix = _settings(args, tmp_path / "p.db")
    assert (settings.ack_batch_max, settings.port) == (1, 1884)
    default, _prefix = _settings(build_parser().parse_args(["receiver"]), tmp_path / "p.db")
    assert default.ack_batch_max == ACK_BATCH_MAX_DEFAULT
    with pytest.raises(SystemExit):
        build_parser().parse_args(["receiver", "--ack-batch-max", "0"])
