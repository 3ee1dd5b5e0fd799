"""Fixtures for the USB-serial meter tests: real stores, emulated meters on real ptys, fast timeouts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.factories import make_store
from support.serial_meters import TZ

from gateway.clock import FakeClock
from gateway.emulate.serial_meter import MeterState, SerialMeterEmulator
from gateway.store import Store


@pytest.fixture
def clock() -> FakeClock:
    # The emulators keep real wall time; the gateway clock is "now", NTP-synchronised.
    return FakeClock(datetime.now(UTC).replace(microsecond=0), synchronised=True)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = make_store(tmp_path, clock)
    yield s
    s.close()


@pytest.fixture
def emulators() -> Iterator[Callable[..., SerialMeterEmulator]]:
    """Factory: ``emulators(family, records=..., **state)`` -> a started emulator (stopped at teardown)."""
    started: list[SerialMeterEmulator] = []

    def make(family: str, *, records: int = 0, **state: object) -> SerialMeterEmulator:
        meter = MeterState(family, tz=TZ, **state)  # type: ignore[arg-type]
        meter.fill(records)
        emu = SerialMeterEmulator(meter)
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()
