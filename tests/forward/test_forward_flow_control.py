"""MQTT 5 flow control: never more unanswered QoS 1 PUBLISHes than the broker's Receive Maximum.

A broker may disconnect a client that exceeds it (0x93 Receive Maximum exceeded), and paho 2.x does not
look at the property itself: the link meters its PUBLISHes. A relay between the gateway and a real mosquitto
withholds every PUBACK, so what the gateway sends upstream meanwhile is exactly what its flow control lets out.
"""

from __future__ import annotations

import time

from support.broker import ForwarderRunner, gateway_config, gateway_state, wait_until
from support.factories import make_store, reading
from support.mqtt_relay import WithholdingRelay

from gateway.clock import SystemClock
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings

N = 40
BROKER_RECEIVE_MAXIMUM = 5


def test_unanswered_publishes_never_exceed_the_brokers_receive_maximum(
    tmp_path, broker_factory, receiver_factory
) -> None:
    broker = broker_factory(extra_lines=[f"max_inflight_messages {BROKER_RECEIVE_MAXIMUM}"])
    receiver = receiver_factory(broker)
    relay = WithholdingRelay(broker.port)
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    add_readings(store, [reading(i) for i in range(1, N + 1)])
    relay.hold()  # CONNACK gets through; no PUBACK does
    config = gateway_config(tmp_path / "gw", port=relay.port, inflight_window=500)
    try:
        with ForwarderRunner(config, store) as run:
            wait_until(lambda: run.forwarder.counters["sent"] == N, what="every reading handed to the link")
            assert run.forwarder._link is not None
            assert run.forwarder._link.receive_maximum == BROKER_RECEIVE_MAXIMUM
            time.sleep(0.3)  # let anything the client would still write reach the relay
            # the retained "online" status counts too: it is a QoS 1 PUBLISH like the readings
            assert relay.publishes_upstream == BROKER_RECEIVE_MAXIMUM

            relay.release()
            wait_until(lambda: Outbox(store).stats().total_unsent == 0, what="drained once PUBACKs flow")
            assert run.forwarder.state == "online"  # the broker never had reason to cut us off
    finally:
        relay.close()
    assert receiver.counts()["readings"] == N
    # "offline" was written before the link closed; the relay's thread counts it when it reads it
    wait_until(lambda: relay.publishes_upstream >= N + 2, what="the offline status through the relay")
    assert relay.publishes_upstream == N + 2  # "online", the readings once each, "offline" at stop


def test_a_stop_with_no_slot_left_ends_the_link_and_the_broker_says_offline(
    tmp_path, broker_factory, receiver_factory
) -> None:
    """The offline status is a QoS 1 PUBLISH too: with as many unanswered as the broker allows, the link does not
    send it past the limit but ends without a DISCONNECT, so that the broker publishes our Last Will instead."""
    broker = broker_factory(extra_lines=[f"max_inflight_messages {BROKER_RECEIVE_MAXIMUM}"])
    receiver = receiver_factory(broker)
    relay = WithholdingRelay(broker.port)
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    add_readings(store, [reading(i) for i in range(1, N + 1)])
    relay.hold()
    config = gateway_config(tmp_path / "gw", port=relay.port, inflight_window=500)
    try:
        with ForwarderRunner(config, store) as run:
            wait_until(lambda: run.forwarder.counters["sent"] == N, what="every reading handed to the link")
            wait_until(lambda: relay.publishes_upstream == BROKER_RECEIVE_MAXIMUM, what="a full window upstream")
            wait_until(lambda: gateway_state(receiver) == "online", what="online status")
        wait_until(lambda: gateway_state(receiver) == "offline", what="the Last Will")
        assert relay.publishes_upstream == BROKER_RECEIVE_MAXIMUM  # nothing past the limit, the status neither
    finally:
        relay.close()
    assert Outbox(store).stats().total_unsent == N  # unanswered and never sent alike: all still to send
