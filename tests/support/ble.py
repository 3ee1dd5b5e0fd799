"""Clocks, config and helpers of the Bluetooth tests (real bleak against the emulated BlueZ).

The gateway's FakeClock reads 2026-11-23 02:00 UTC (10:00 in Asia/Shanghai); an emulated device's clock is that
local time plus a chosen skew. Each test runs its coroutine in its own event loop (bleak keeps one BlueZ manager
per loop), bounded so that a wedged emulation fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from gateway.config import GatewayConfig
from gateway.emulate.bluez_env import BluezEnv

TZ = ZoneInfo("Asia/Shanghai")
GATEWAY_NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
LOCAL_NOW = GATEWAY_NOW.astimezone(TZ).replace(tzinfo=None)
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """Run ``coro`` in a fresh event loop, for at most 60 s."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(bounded())


def with_ble(config: GatewayConfig, **changes: Any) -> GatewayConfig:
    """``config`` with ``meters.ble`` settings changed."""
    ble = config.meters.ble.model_copy(update=changes)
    return config.model_copy(update={"meters": config.meters.model_copy(update={"ble": ble})})


@contextmanager
def emulated_bluez(adapters: int = 3) -> Iterator[BluezEnv]:
    """A fresh emulated BlueZ (hci0 the gateway's), stopped by PID; an exception logged inside it fails the test."""
    env = BluezEnv(adapters=adapters)
    env.start()
    try:
        yield env
    finally:
        env.stop()
        errors = env.errors_logged()
        assert not errors, errors[0]
