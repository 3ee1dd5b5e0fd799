"""Wrong password, untrusted certificate, missing client certificate, unreachable host: each gets its own
state and error text, the forwarder backs off, nothing is lost, and it recovers once the cause is fixed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.broker import ForwarderRunner, free_port, gateway_config, password_file, secret_file, wait_until
from support.factories import make_store, reading

from gateway.clock import SystemClock
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings

N = 30


def _store(tmp_path: Path):
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    add_readings(store, [reading(i) for i in range(1, N + 1)])
    return store


def _assert_backing_off_and_nothing_lost(run: ForwarderRunner, store, state: str, text: str) -> None:
    wait_until(lambda: run.forwarder.state == state, what=f"state {state}")
    # a second failed attempt proves the backoff loop keeps trying (and the thread is alive)
    wait_until(lambda: run.forwarder.retry_in_s is not None)
    snap = run.forwarder.snapshot()
    assert snap["connected"] is False
    assert text in snap["last_error"]
    assert Outbox(store).stats().total_unsent == N  # all still queued, none parked
    assert Outbox(store).stats().parked == 0


def test_wrong_password_then_fixed(tmp_path, broker_factory, receiver_factory, caplog) -> None:
    users = password_file(tmp_path / "auth", {"gw": "right-secret", "platform": "p"})
    broker = broker_factory(password_file=users)
    pw = secret_file(tmp_path / "secrets" / "broker-password", "wrong-secret")
    receiver = receiver_factory(broker, username="platform", password="p")
    store = _store(tmp_path)
    config = gateway_config(tmp_path / "gw", port=broker.port, username="gw", password_file=pw)
    caplog.set_level(logging.INFO, logger="gateway.forward")
    with ForwarderRunner(config, store) as run:
        _assert_backing_off_and_nothing_lost(run, store, "auth_refused", "BrokerAuthError")
        assert any("BrokerAuthError" in r.getMessage() for r in caplog.records)
        secret_file(pw, "right-secret")  # IT fixes the secret file; the next attempt reads it again
        wait_until(lambda: Outbox(store).stats().total_unsent == 0, what="drained after the fix")
        assert run.forwarder.state == "online"
    assert receiver.counts()["readings"] == N
    assert not any("right-secret" in r.getMessage() or "wrong-secret" in r.getMessage() for r in caplog.records)


def test_untrusted_broker_certificate_then_fixed(tmp_path, broker_factory, receiver_factory, pki) -> None:
    broker = broker_factory(tls_ca=pki.ca, tls_cert=pki.server_cert, tls_key=pki.server_key)
    receiver = receiver_factory(broker, ca_file=pki.ca)
    ca_file = tmp_path / "trusted-ca.crt"
    ca_file.write_bytes(pki.other_ca.read_bytes())  # the gateway trusts the wrong CA
    store = _store(tmp_path)
    config = gateway_config(tmp_path / "gw", port=broker.port, host="localhost", tls={"ca_file": str(ca_file)})
    with ForwarderRunner(config, store) as run:
        _assert_backing_off_and_nothing_lost(run, store, "tls_error", "certificate")
        ca_file.write_bytes(pki.ca.read_bytes())
        wait_until(lambda: Outbox(store).stats().total_unsent == 0, what="drained after the fix")
    assert receiver.counts()["readings"] == N


def test_mutual_tls_requires_the_client_certificate(tmp_path, broker_factory, receiver_factory, pki) -> None:
    broker = broker_factory(tls_ca=pki.ca, tls_cert=pki.server_cert, tls_key=pki.server_key, require_client_cert=True)
    receiver = receiver_factory(broker, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    store = _store(tmp_path)
    without = gateway_config(tmp_path / "gw", port=broker.port, host="localhost", tls={"ca_file": str(pki.ca)})
    with ForwarderRunner(without, store) as run:
        wait_until(lambda: run.forwarder.retry_in_s is not None and run.forwarder.state == "tls_error")
        error = run.forwarder.last_error
        assert error is not None and error.type == "BrokerTLSError" and "certificate required" in error.message
        assert Outbox(store).stats().total_unsent == N
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=broker.port, host="localhost", tls=tls), store):
        wait_until(lambda: Outbox(store).stats().total_unsent == 0, what="drained with mutual TLS")
    assert receiver.counts()["readings"] == N


def test_unreachable_host_then_broker_appears(tmp_path, broker_factory, receiver_factory) -> None:
    port = free_port()
    store = _store(tmp_path)
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=port), store) as run:
        _assert_backing_off_and_nothing_lost(run, store, "unreachable", "BrokerUnavailable")
        attempts = run.forwarder.loops
        from gateway.emulate.broker import BrokerOptions, MosquittoBroker

        broker = MosquittoBroker(tmp_path / "late-broker", BrokerOptions(port=port))
        broker.start()
        try:
            receiver = receiver_factory(broker)
            wait_until(lambda: Outbox(store).stats().total_unsent == 0, what="drained once the broker is up")
            assert run.forwarder.loops > attempts
        finally:
            run.stop()
            broker.stop()
    assert receiver.counts()["readings"] == N


@pytest.mark.parametrize("attempt", [0, 1, 5, 50])
def test_backoff_is_exponential_with_jitter_and_capped(attempt: int) -> None:
    import random

    from gateway.forward.forwarder import backoff_delay

    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
    ceiling = min(60.0, 2.0**attempt)
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 100  # jittered, not lock-step


def test_resumes_promptly_when_the_broker_returns_even_deep_in_backoff(tmp_path, broker, receiver_factory) -> None:
    """Issue 15 #12: the link resumes once the broker is back, not when the backoff runs out.

    An hour of backoff stands for "late in a long outage" (default 1 -> 60 s): the forwarder probes the
    broker's port meanwhile (``forward.reconnect_probe_s``, default 1 s) and reconnects as soon as it answers,
    well inside the generous wait below.
    """
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    receiver = receiver_factory(broker)
    config = gateway_config(tmp_path / "gw", port=broker.port, backoff_initial_s=3600.0, backoff_max_s=3600.0)
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: run.forwarder.state == "online")
        broker.stop()
        wait_until(lambda: run.forwarder.state == "unreachable", what="the outage noticed")
        assert run.forwarder.retry_in_s is not None and run.forwarder.retry_in_s >= 1800
        add_readings(store, [reading(1)])  # taken during the outage
        broker.start()
        wait_until(lambda: Outbox(store).stats().total_unsent == 0, timeout_s=30, what="resumed and confirmed")
        assert run.forwarder.counters["connects"] == 2
    assert receiver.counts()["readings"] == 1


def test_probe_does_not_defeat_the_backoff_when_the_port_answers_but_the_broker_does_not(tmp_path) -> None:
    """Something else holding the port (a proxy before a dead broker): after one early try, the backoff holds."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks MQTT
    port = listener.getsockname()[1]
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    config = gateway_config(tmp_path / "gw", port=port, keepalive_s=5, backoff_initial_s=3600.0,
                            backoff_max_s=3600.0)  # fmt: skip
    try:
        with ForwarderRunner(config, store) as run:
            # connect (no CONNACK: unreachable) -> probe answers -> connect again (fails) -> probes distrusted
            wait_until(lambda: not run.forwarder._probe_trusted, timeout_s=60, what="probes distrusted")
            assert run.forwarder.counters["connect_attempts"] == 2  # the first, and one after the probe
            assert run.forwarder.state == "unreachable" and run.forwarder.retry_in_s >= 1800
            assert not run.forwarder._may_probe()  # sitting out the hour now
    finally:
        listener.close()


def test_a_broker_that_stops_answering_is_noticed_by_keepalive(tmp_path, broker, receiver_factory) -> None:
    """A broker that goes silent without closing the connection (a frozen host, a cable pulled somewhere between):
    no error ever arrives, only the missing PINGRESP tells. The link, driven by the forwarder's event loop, runs
    paho's keepalive itself; the forwarder leaves ``online``, backs off, and drains once the broker answers."""
    import os
    import signal

    assert broker.process is not None
    receiver = receiver_factory(broker)
    store = _store(tmp_path)
    config = gateway_config(tmp_path / "gw", port=broker.port, keepalive_s=5)
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: Outbox(store).stats().total_unsent == 0, what="drained before the broker froze")
        os.kill(broker.process.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: run.forwarder.state != "online", what="keepalive noticed the silent broker")
            add_readings(store, [reading(i) for i in range(N + 1, 2 * N + 1)])
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)
        wait_until(lambda: Outbox(store).stats().total_unsent == 0, what="drained after the broker answered again")
        assert run.forwarder.state == "online"
    assert receiver.counts()["readings"] == 2 * N
