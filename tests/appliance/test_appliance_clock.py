"""The clock flag: kernel read-out, file-based sync state flipping readings' time_trusted, and clock events."""

from __future__ import annotations

import asyncio
import ctypes
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from support.factories import MESSAGES, T0, make_store

from gateway.clock import FakeClock, SystemClock, Timex, kernel_clock_synchronised, read_timex
from gateway.health import HealthMonitor
from gateway.meters.session import FLAG_GATEWAY_CLOCK_UNSYNCED, DownloadSession
from gateway.records import MeterInfo, MeterRecord, Unit
from gateway.store import Store
from gateway.wire import contract

TZ = ZoneInfo("Asia/Shanghai")


def test_struct_timex_layout_matches_the_kernel() -> None:
    """If the struct were laid out wrong, tick and time would read garbage."""
    assert ctypes.sizeof(Timex) == 208  # <sys/timex.h> on 64-bit Linux
    reading = read_timex()
    assert reading is not None
    state, tx = reading
    assert 0 <= state <= 5  # TIME_OK .. TIME_ERROR
    assert tx.modes == 0  # read-only call
    assert abs(tx.time.tv_sec - time.time()) < 5
    assert 0 <= tx.time.tv_usec < 1_000_000 or (tx.status & 0x2000)  # STA_NANO: nanoseconds
    assert 1000 <= tx.tick <= 100_000  # microseconds per kernel tick (10000 at USER_HZ=100)
    assert 0 <= tx.maxerror <= 16_000_000
    assert kernel_clock_synchronised() == (tx.maxerror < 16_000_000)


def test_file_sync_check_flips(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    clock = SystemClock("file", flag)
    assert clock.is_synchronised() is False
    flag.touch()
    assert clock.is_synchronised() is True
    flag.unlink()
    assert clock.is_synchronised() is False
    assert SystemClock("assume_unsynced").is_synchronised() is False


class ScriptedMeter:
    """A meter stand-in for the session (no device needed): fixed records and a plausible clock."""

    newest_first = False

    def __init__(self, records: list[MeterRecord]) -> None:
        self._records = records

    async def read_info(self) -> MeterInfo:
        return MeterInfo(meter_id="serial:CLOCK1", family="scripted", transport="none", serial="CLOCK1")

    async def read_clock(self) -> datetime | None:
        return datetime.now(TZ).replace(tzinfo=None) - timedelta(minutes=3)

    async def count_records(self, since_sequence: int | None) -> int | None:
        return len([r for r in self._records if since_sequence is None or (r.sequence or 0) > since_sequence])

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        for record in self._records:
            yield record

    async def set_clock(self, meter_time: datetime) -> None:
        raise AssertionError("not configured")

    async def close(self) -> None:
        return None


def _download(store: Store, clock: SystemClock, seqs: range) -> None:
    base = datetime.now(TZ).replace(tzinfo=None) - timedelta(days=1)
    records = [MeterRecord(sequence=s, meter_time=base + timedelta(hours=s), value=6.1, unit=Unit.MMOL_L) for s in seqs]
    result = asyncio.run(DownloadSession(store, clock, ScriptedMeter(records), tz=TZ).run())
    assert result.state == "done" and result.added == len(seqs)


def test_readings_untrusted_while_unsynchronised(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    clock = SystemClock("file", flag)
    store = make_store(tmp_path, clock=clock)  # type: ignore[arg-type]
    _download(store, clock, range(1, 4))  # clock not synchronised
    flag.touch()
    _download(store, clock, range(4, 7))  # synchronised now
    rows = store.query("SELECT sequence, time_trusted, flags FROM readings ORDER BY sequence")
    assert [(r["sequence"], r["time_trusted"]) for r in rows] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1)]
    assert all(FLAG_GATEWAY_CLOCK_UNSYNCED in json.loads(r["flags"]) for r in rows[:3])
    assert not any(FLAG_GATEWAY_CLOCK_UNSYNCED in json.loads(r["flags"]) for r in rows[3:])
    # The platform sees it too: the glucose payloads carry time_trusted.
    docs = [json.loads(r["payload"]) for r in store.query(f"SELECT payload FROM {MESSAGES} WHERE kind = 'glucose'")]
    assert sorted((d["sequence"], d["time_trusted"]) for d in docs) == [
        (1, False),
        (2, False),
        (3, False),
        (4, True),
        (5, True),
        (6, True),
    ]


def events(store: Store, prefix: str = "clock_") -> list[str]:
    return [r["kind"] for r in store.query("SELECT kind FROM events WHERE kind LIKE ? ORDER BY id", [prefix + "%"])]


def monitor(store: Store, clock: FakeClock) -> HealthMonitor:
    return HealthMonitor(store, clock, low_disk_warn_mb=0, min_free_mb=0, interval_s=1.0)


def test_clock_events_on_transitions_only(tmp_path: Path) -> None:
    clock = FakeClock(T0, synchronised=False)
    store = make_store(tmp_path, clock=clock)
    mon = monitor(store, clock)
    for _ in range(3):
        asyncio.run(mon.check())
    assert events(store) == ["clock_untrusted"]
    assert mon.snapshot()["clock"]["synchronised"] is False
    # A restart while still unsynchronised repeats nothing (the state is kept in the store).
    asyncio.run(monitor(store, clock).check())
    assert events(store) == ["clock_untrusted"]
    clock.synchronised = True
    mon2 = monitor(store, clock)
    asyncio.run(mon2.check())
    asyncio.run(mon2.check())
    assert events(store) == ["clock_untrusted", "clock_synchronised"]
    clock.synchronised = False
    asyncio.run(mon2.check())
    assert events(store) == ["clock_untrusted", "clock_synchronised", "clock_untrusted"]
    # Each event is also an up message on the events topic that satisfies the contract.
    rows = store.query(f"SELECT topic, payload FROM {MESSAGES} WHERE kind = 'event' ORDER BY seq")
    assert [r["topic"] for r in rows] == [contract.TOPIC_EVENTS] * 3
    for row in rows:
        doc = json.loads(row["payload"])
        contract.validate(contract.SCHEMA_EVENT, doc)
    assert [json.loads(r["payload"])["level"] for r in rows] == ["warning", "info", "warning"]


def test_first_start_synchronised_reports_nothing(tmp_path: Path) -> None:
    clock = FakeClock(T0, synchronised=True)
    store = make_store(tmp_path, clock=clock)
    asyncio.run(monitor(store, clock).check())
    assert events(store) == []
    assert store.get_kv("health.clock") == "synchronised"
