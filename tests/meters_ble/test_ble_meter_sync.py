"""Real bleak against the emulated GLS meter on an emulated BlueZ, end to end into the store.

Each test gets a fresh private dbus-daemon + bluezoo (stopped by PID) and its own event loop (bleak keeps one
BlueZ manager per loop). hci0 is the gateway's adapter; meters sit on hci1 and hci2. Clocks are fixed: the
gateway's FakeClock reads 2026-11-23 02:00 UTC (10:00 in Asia/Shanghai), the meter's clock is that local time
plus a chosen skew.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.ble import LOCAL_NOW, TZ, run, with_ble
from support.imports import gateway_modules

from gateway.clock import FakeClock
from gateway.config import GatewayConfig
from gateway.desk import MeterProgress
from gateway.emulate.ble_meter import EmulatedGlucoseMeter, Faults, MeterProfile, make_records
from gateway.emulate.bluez_env import BluezEnv
from gateway.errors import DeviceNotFound
from gateway.meters.drivers.gls import open_driver, scan
from gateway.meters.session import SessionResult
from gateway.meters.source import MeterSource, sync_meter
from gateway.records import Unit
from gateway.runtime import Runtime
from gateway.store import Store, open_store

pytestmark = pytest.mark.ble

REPO = Path(__file__).resolve().parents[2]


def meter(
    adapter: int = 1, count: int = 20, *, unit: Unit = Unit.MG_DL, serial: str = "EMU-0001", skew_s: float = 0.0,
    faults: Faults | None = None,
) -> EmulatedGlucoseMeter:  # fmt: skip
    return EmulatedGlucoseMeter(
        BluezEnv.adapter_path(adapter),
        records=make_records(count, unit=unit),
        profile=MeterProfile(serial=serial, clock_skew=timedelta(seconds=skew_s)),
        faults=faults,
        now=lambda: LOCAL_NOW,
    )


async def sync(
    m: EmulatedGlucoseMeter, config: GatewayConfig, store: Store, clock: FakeClock, **kw: Any
) -> SessionResult:
    assert m.address is not None
    return await sync_meter(m.address, config=config, store=store, clock=clock, **kw)


def readings(store: Store, meter_id: str) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM readings WHERE meter_id = ? ORDER BY sequence", [meter_id])


def test_500_records_then_nothing_new_then_only_the_new_ones(bluez, config, store, clock) -> None:
    progress: list[tuple[int, int | None]] = []

    async def go() -> tuple[SessionResult, SessionResult, SessionResult, list[Any]]:
        async with meter(count=500, skew_s=-300) as m:  # meter clock 5 minutes slow
            first = await sync(m, config, store, clock, patient_id="P-001",
                               on_progress=lambda p: progress.append((p.done, p.total)))  # fmt: skip
            second = await sync(m, config, store, clock)
            m.add_records(7)  # the patient measured 7 more times before the next visit
            third = await sync(m, config, store, clock)
            return first, second, third, list(m.log)

    first, second, third, log = run(go())
    assert (first.state, first.received, first.added) == ("done", 500, 500)
    assert first.meter is not None and first.meter.meter_id == "gls:EMU-0001"
    assert first.meter.model == "GLS-EMU 1" and first.meter.firmware == "1.0.2"
    assert progress[0] == (0, 500) and progress[-1] == (500, 500)
    assert (second.state, second.received, second.added) == ("done", 0, 0)
    assert (third.state, third.received, third.added) == ("done", 7, 7)
    # the meter was asked only for what was new: ">= 501" the second time, ">= 508" after the new readings
    racp = [entry[1] for entry in log if entry[0] == "racp"]
    assert racp == [b"\x04\x01", b"\x01\x01", b"\x04\x03\x01\xf5\x01", b"\x04\x03\x01\xf5\x01", b"\x01\x03\x01\xf5\x01"]

    rows = readings(store, "gls:EMU-0001")
    assert [r["sequence"] for r in rows] == list(range(1, 508))
    expected = make_records(507)
    assert [r["value"] for r in rows] == [float(rec.value) for rec in expected]
    assert {r["unit"] for r in rows} == {"mg/dL"}
    # clock correction: the meter was 300 s slow, so each corrected time is meter time + 300 s, in UTC
    assert {r["clock_offset_s"] for r in rows} == {300.0}
    r1 = rows[0]
    assert datetime.fromisoformat(r1["meter_time"]) == expected[0].time
    assert datetime.fromisoformat(r1["corrected_time"]) == (expected[0].time + timedelta(seconds=300)).replace(
        tzinfo=TZ
    )
    assert all(r["time_trusted"] == 1 for r in rows)
    assert {r["patient_id"] for r in rows[:500]} == {"P-001"}
    # context paired by sequence: every third record carries a meal, the others none
    meals = {r["sequence"]: r["meal"] for r in rows}
    assert all((meals[s] is not None) == (s % 3 == 0) for s in meals)
    assert (meals[3], meals[6], meals[9], meals[4]) == ("bedtime", "fasting", "after_meal", None)
    # one glucose outbox message per reading, none twice
    assert store.scalar("SELECT count(*) FROM outbox WHERE kind = 'glucose'") == 507


def test_link_dropped_at_record_200_then_resumed(bluez, config, store, clock) -> None:
    async def go() -> tuple[SessionResult, SessionResult]:
        async with meter(count=300, faults=Faults(drop_link_after=200)) as m:
            cut = await sync(m, config, store, clock)
            resumed = await sync(m, config, store, clock)
            return cut, resumed

    cut, resumed = run(go())
    assert cut.state == "interrupted" and cut.error is not None and cut.error.type == "DeviceDisconnected"
    assert cut.added == 200
    assert (resumed.state, resumed.added, resumed.duplicates) == ("done", 100, 0)
    seqs = [r["sequence"] for r in readings(store, "gls:EMU-0001")]
    assert seqs == list(range(1, 301))  # nothing lost, nothing twice
    assert store.scalar("SELECT count(*) FROM outbox WHERE kind = 'glucose'") == 300


def test_bonding_required_meter_is_paired_then_read(bluez, config, store, clock) -> None:
    no_retries = with_ble(config, connect_retries=0)  # pairing is not a retry: it happens even without retries

    async def go() -> tuple[SessionResult, bool, list[Any]]:
        async with meter(count=12, faults=Faults(bonding_required=True)) as m:
            assert m.address is not None
            driver = await open_driver(m.address, no_retries)
            paired = driver.paired
            await driver.close()
            result = await sync(m, config, store, clock)  # bonded now: no second pairing needed
            return result, paired, list(m.log)

    result, paired, log = run(go())
    assert paired
    assert any(entry[0] == "refused_unpaired" for entry in log)
    assert (result.state, result.added) == ("done", 12)


def test_two_meters_at_once_mg_dl_and_mmol_l(bluez, config, store, clock) -> None:
    async def go() -> tuple[SessionResult, SessionResult]:
        async with meter(1, 40, serial="A-1") as a, meter(2, 25, unit=Unit.MMOL_L, serial="B-2", skew_s=120) as b:
            return await asyncio.gather(
                sync(a, config, store, clock, patient_id="P-A"), sync(b, config, store, clock, patient_id="P-B")
            )

    ra, rb = run(go())
    assert (ra.state, ra.added, rb.state, rb.added) == ("done", 40, "done", 25)
    a_rows, b_rows = readings(store, "gls:A-1"), readings(store, "gls:B-2")
    assert [r["value"] for r in a_rows] == [float(x.value) for x in make_records(40)]
    assert [r["value"] for r in b_rows] == [float(x.value) for x in make_records(25, unit=Unit.MMOL_L)]
    assert {r["unit"] for r in a_rows} == {"mg/dL"} and {r["unit"] for r in b_rows} == {"mmol/L"}
    assert {r["patient_id"] for r in a_rows} == {"P-A"} and {r["patient_id"] for r in b_rows} == {"P-B"}
    assert {r["clock_offset_s"] for r in b_rows} == {-120.0}
    # canonical mmol/L from mg/dL
    assert a_rows[0]["mmol_l"] == round(a_rows[0]["value"] / 18.016, 2)


def test_no_records(bluez, config, store, clock) -> None:
    async def go() -> tuple[SessionResult, list[Any]]:
        async with meter(count=0) as m:
            return await sync(m, config, store, clock), list(m.log)

    result, log = run(go())
    assert (result.state, result.received, result.added) == ("done", 0, 0)
    assert [e[1] for e in log if e[0] == "racp"] == [b"\x04\x01"]  # counted zero: no report asked


def test_malformed_frame_is_skipped_and_reported_the_rest_kept(bluez, config, store, clock) -> None:
    async def go() -> tuple[SessionResult, SessionResult]:
        async with meter(count=10, faults=Faults(malformed_sequences=frozenset({5}))) as m:
            return await sync(m, config, store, clock), await sync(m, config, store, clock)

    first, again = run(go())
    assert first.state == "interrupted" and first.error is not None and first.error.type == "RecordError"
    assert "malformed frame" in first.error.message and "need 13 bytes, got 12" in first.error.message
    assert [r["sequence"] for r in readings(store, "gls:EMU-0001")] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert (again.state, again.added) == ("done", 0)
    meter_row = store.query("SELECT last_error FROM meters WHERE meter_id = 'gls:EMU-0001'")[0]
    assert meter_row["last_error"] is None  # the clean second visit cleared it


def test_scan_finds_only_glucose_meters_and_absent_meter_is_not_found(bluez, config) -> None:
    async def go() -> list[Any]:
        async with meter(1, 1, serial="A-1"), meter(2, 1, serial="B-2"):
            found = await scan(config, timeout=1.5)
        with pytest.raises(DeviceNotFound):
            await open_driver("00:00:00:09:09:09", with_ble(config, connect_timeout_s=1.0, connect_retries=0))
        return found

    found = run(go())
    assert sorted(f.address for f in found) == ["00:00:00:02:00:00", "00:00:00:03:00:00"]
    assert all(f.name == "Emu Glucose Meter" and f.family == "gls" for f in found)


def test_daemon_component_serves_a_desk_request(bluez, config, store, clock) -> None:
    from gateway.services import GatewayServices

    async def go() -> MeterProgress | None:
        runtime = Runtime(config=config, store=store, clock=clock)
        runtime.desk.bind(asyncio.get_running_loop())
        source = MeterSource(runtime)
        runtime.components = [source]
        task = asyncio.create_task(source.run())
        async with meter(count=30) as m:
            assert m.address is not None
            await asyncio.sleep(0)  # let the component create its queue
            session_id = GatewayServices(runtime).request_meter_sync(m.address, patient_id="P-9", operator="nurse")
            for _ in range(200):
                live = runtime.progress.get(session_id)
                if live and live.state in ("done", "failed", "interrupted"):
                    break
                await asyncio.sleep(0.05)
            assert source.healthy()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        live = runtime.progress.get(session_id)
        assert live is None or isinstance(live, MeterProgress)
        return live

    live = run(go())
    assert live is not None and live.state == "done" and live.added == 30
    assert {r["patient_id"] for r in readings(store, "gls:EMU-0001")} == {"P-9"}


def test_gateway_package_never_imports_bluezoo() -> None:
    """bluezoo is GPL-2.0-only: it runs as its own process, never imported by gateway/."""
    offenders = [str(e) for m in gateway_modules().values() for e in m.edges if e.imported.split(".")[0] == "bluezoo"]
    assert not offenders  # lazy, TYPE_CHECKING and importlib imports included (tests/support/imports.py)
    header = (REPO / "tools" / "bluezoo" / "run_bluezoo.py").read_text(encoding="utf-8").splitlines()[0]
    assert header == "# SPDX-License-Identifier: GPL-2.0-only"


def test_stalled_meter_times_out_keeps_what_arrived_and_is_aborted(bluez, config, store, clock) -> None:
    fast_timeout = with_ble(config, record_timeout_s=1.0)

    async def go() -> tuple[SessionResult, list[Any], bool]:
        async with meter(count=5, faults=Faults(delay_s=5.0)) as m:
            result = await sync(m, fast_timeout, store, clock)
            await asyncio.sleep(0.1)
            return result, list(m.log), m.stats.aborted

    result, log, aborted = run(go())
    assert result.state == "interrupted" and result.error is not None and result.error.type == "DeviceTimeout"
    assert result.added == 1  # the first record arrived before the meter stalled, and is kept
    assert b"\x03\x00" in [e[1] for e in log if e[0] == "racp"]  # the gateway aborted the report on close
    assert aborted


def test_slow_meter_is_read_completely(bluez, config, store, clock) -> None:
    async def go() -> SessionResult:
        async with meter(count=8, faults=Faults(delay_s=0.05)) as m:
            return await sync(m, config, store, clock)

    result = run(go())
    assert (result.state, result.added) == ("done", 8)


def test_meter_without_current_time_gives_untrusted_times(bluez, config, store, clock) -> None:
    async def go() -> SessionResult:
        m = EmulatedGlucoseMeter(
            BluezEnv.adapter_path(1), records=make_records(3), profile=MeterProfile(current_time_service=False)
        )
        async with m:
            return await sync(m, config, store, clock)

    result = run(go())
    assert result.state == "done" and result.clock is not None and not result.clock.trusted
    rows = readings(store, "gls:EMU-0001")
    assert {r["time_trusted"] for r in rows} == {0}
    assert all("meter_clock_unknown" in json.loads(r["flags"]) for r in rows)


def test_cli_scan_and_sync_against_the_emulator(bluez, tmp_path) -> None:
    """``gateway meters scan`` and ``gateway meters sync ADDRESS`` as a nurse would type them."""
    import sys

    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        f'[gateway]\nsite_id = "chc-1"\ngateway_id = "gw-1"\nstate_dir = "{tmp_path / "state"}"\n'
        '[clock]\nsync_check = "assume_synced"\n[meters.ble]\nenabled = true\nscan_timeout_s = 1.5\n',
        encoding="utf-8",
    )

    async def gateway(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "meters", *args, "-c", str(config_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    async def go() -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        async with meter(count=60, serial="CLI-7") as m:
            assert m.address is not None
            return await gateway("scan"), await gateway("sync", m.address, "--patient", "P-CLI")

    (scan_rc, scan_out, _), (sync_rc, sync_out, sync_err) = run(go())
    assert scan_rc == 0 and "00:00:00:02:00:00  Emu Glucose Meter" in scan_out
    assert sync_rc == 0, sync_err
    assert "gls:CLI-7: done, 60 received, 60 new" in sync_out
    assert "60/60" in sync_err  # the progress bar
    db = open_store(tmp_path / "state" / "gateway.db", tmp_path / "state" / "images")
    try:
        assert {r["patient_id"] for r in readings(db, "gls:CLI-7")} == {"P-CLI"}
        assert len(readings(db, "gls:CLI-7")) == 60
    finally:
        db.close()


def test_ble_readings_reach_the_reference_receiver(bluez, tmp_path, broker, receiver_factory, clock) -> None:
    """Emulated BLE meter -> real bleak -> store -> real MQTT forwarder -> reference receiver, acknowledged."""
    from support.broker import GATEWAY, SITE, ForwarderRunner, gateway_config, wait_until

    from gateway.store.db import Origin
    from gateway.store.outbox import Outbox

    store = open_store(tmp_path / "gw.db", tmp_path / "img", clock=clock, origin=Origin(SITE, GATEWAY))
    config = gateway_config(tmp_path / "gw", port=broker.port)

    async def go() -> SessionResult:
        async with meter(count=100, unit=Unit.MMOL_L, serial="MQ-1", skew_s=60) as m:
            return await sync(m, config, store, clock, patient_id="P-0100")  # meters.ble defaults: adapter hci0

    result = run(go())
    assert (result.state, result.added) == ("done", 100)
    receiver = receiver_factory(broker)
    try:
        with ForwarderRunner(config, store, clock):
            wait_until(lambda: receiver.counts()["readings"] == 100, what="100 readings at the receiver")
            wait_until(lambda: Outbox(store).stats().counts["glucose"] == {"acked": 100}, what="all acknowledged")
        docs = [r["doc"] for r in receiver.readings()]
        expected = make_records(100, unit=Unit.MMOL_L)
        assert {d["meter_id"] for d in docs} == {"gls:MQ-1"} and {d["patient_id"] for d in docs} == {"P-0100"}
        assert sorted((d["sequence"], d["value"], d["unit"]) for d in docs) == [
            (r.sequence, float(r.value), "mmol/L") for r in expected
        ]
        assert receiver.counts()["duplicates"] == 0
    finally:
        store.close()
