"""Fixtures of the Bluetooth tests: a fresh emulated BlueZ per test (stopped by PID), a config naming hci0, a fixed
clock and a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ble import GATEWAY_NOW, TZ, emulated_bluez

from gateway.clock import FakeClock
from gateway.config import GatewayConfig, parse_config
from gateway.emulate.bluez_env import BluezEnv
from gateway.store import Store, open_store


@pytest.fixture
def bluez() -> Iterator[BluezEnv]:
    with emulated_bluez(3) as env:
        yield env


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    return parse_config(
        {
            "gateway": {"site_id": "chc-1", "gateway_id": "gw-1", "state_dir": str(tmp_path), "timezone": TZ.key},
            "meters": {
                "ble": {"enabled": True, "adapter": "hci0", "scan_timeout_s": 1.5, "connect_timeout_s": 5,
                        "record_timeout_s": 5, "racp_timeout_s": 5},
            },
        }
    )  # fmt: skip


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(GATEWAY_NOW, synchronised=True)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = open_store(tmp_path / "gateway.db", tmp_path / "images", clock=clock)
    yield s
    s.close()
