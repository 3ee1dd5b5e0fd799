"""A backlog drains over TLS, every platform ack read and applied: the link runs on the event loop, which
watches the socket (not paho), over an SSL socket as over a plain one. (The link also reads what TLS holds
already decrypted, ``SSLSocket.pending``, as paho's own loop does; with Python's defaults, one record read at a
time, this drain does not depend on it.)"""

from __future__ import annotations

from support.broker import ForwarderRunner, gateway_config, wait_until
from support.factories import make_store, reading

from gateway.clock import SystemClock
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings

N = 1500


def test_a_backlog_drains_over_tls_and_every_ack_is_read(tmp_path, broker_factory, receiver_factory, pki) -> None:
    broker = broker_factory(tls_ca=pki.ca, tls_cert=pki.server_cert, tls_key=pki.server_key)
    receiver = receiver_factory(broker, ca_file=pki.ca)
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    add_readings(store, [reading(i) for i in range(1, N + 1)])
    # a long keepalive: no PINGRESP comes to wake a reader that stopped early
    config = gateway_config(tmp_path / "gw", port=broker.port, host="localhost", tls={"ca_file": str(pki.ca)},
                            keepalive_s=300)  # fmt: skip
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: Outbox(store).stats().total_unsent == 0, what="every message acked over TLS")
        assert run.forwarder.counters["acked"] == N
    assert receiver.counts()["readings"] == N
