"""pytest fixtures around a real mosquitto and the reference receiver (loaded via ``pytest_plugins``).

- ``broker``: a plain mosquitto on a free loopback port, persistence on, stopped at the end.
- ``broker_factory(**options)``: more brokers with :class:`gateway.emulate.broker.BrokerOptions` options.
- ``pki``: a CA, server and client certificates (cryptography, EC P-256) and an unrelated CA.
- ``receiver_factory(broker, **settings)``: reference receivers (stopped at the end).

Tests skip with a reason when mosquitto is not installed (scripts/setup installs it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.emulate.platform import Receiver
from support.broker import MosquittoBroker, Pki, make_pki, mosquitto_available, start_broker, start_receiver


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (scripts/setup installs it)")
    started: list[MosquittoBroker] = []

    def make(**options: Any) -> MosquittoBroker:
        b = start_broker(tmp_path / f"broker{len(started)}", **options)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return broker_factory()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def receiver_factory(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(broker: MosquittoBroker, db: Path | None = None, **settings: Any) -> Receiver:
        r = start_receiver(broker, db or tmp_path / f"platform{len(started)}.db", **settings)
        started.append(r)
        return r

    yield make
    for r in started:
        with contextlib.suppress(Exception):
            r.stop()
