"""The daemon component: a meter plugged in is identified and downloaded; desk requests; unplug; the CLI."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support.serial_meters import TZ

from gateway.cli import main
from gateway.config import parse_config
from gateway.desk import SerialSyncRequest
from gateway.emulate.serial_meter import MeterState, SerialMeterEmulator
from gateway.meters.source import MeterSource
from gateway.runtime import Runtime
from gateway.store import readings as store_readings


def _config(tmp_path: Path, link: Path, *, auto_sync: bool, reprobe_s: float = 5.0):
    return parse_config(
        {
            "gateway": {"site_id": "chc-test", "gateway_id": "gw-test", "state_dir": str(tmp_path / "state")},
            "clock": {"sync_check": "assume_synced"},
            "meters": {
                "serial": {
                    "enabled": True,
                    "ports": [str(link)],
                    "poll_interval_s": 0.05,
                    "auto_sync": auto_sync,
                    "response_timeout_s": 1.0,
                    "probe_timeout_s": 1.0,
                    "reprobe_interval_s": reprobe_s,
                }
            },
        },
        check_files=False,
    )


async def _until(predicate, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_plugged_meter_is_identified_and_auto_synced_then_unplug_is_noticed(tmp_path, store, clock) -> None:
    link = tmp_path / "ttyMETER"
    config = _config(tmp_path, link, auto_sync=True)
    runtime = Runtime(config=config, store=store, clock=clock)
    source = MeterSource(runtime)
    emu = SerialMeterEmulator(MeterState("onetouch_ultraeasy", tz=TZ), link=link, retransmit_s=0.05)
    emu.state.fill(50)
    meter_id = f"onetouch_ultraeasy:{emu.state.serial}"

    async def scenario() -> None:
        runtime.desk.bind(asyncio.get_running_loop())
        task = asyncio.create_task(source.run())
        await asyncio.sleep(0.2)
        assert store_readings.count_readings(store) == 0
        emu.start()  # the nurse plugs the cable in
        await _until(lambda: store_readings.count_readings(store) == 50)
        await _until(lambda: getattr(runtime.devices.get(meter_id), "state", None) == "done")
        assert source.healthy()
        assert source.snapshot()["meters"] == {str(link): meter_id}
        done = [v for _, v in runtime.progress.items() if v.state == "done"]
        assert done and done[-1].done == 50 and done[-1].total == 50
        emu.unplug()
        await _until(lambda: getattr(runtime.devices.get(meter_id), "state", None) == "unplugged")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
    finally:
        emu.stop()


def test_meter_taken_off_a_cable_that_stays_plugged_in_and_brought_back(tmp_path, store, clock) -> None:
    link = tmp_path / "ttyMETER"
    config = _config(tmp_path, link, auto_sync=True, reprobe_s=1.0)
    runtime = Runtime(config=config, store=store, clock=clock)
    source = MeterSource(runtime)
    emu = SerialMeterEmulator(MeterState("onetouch_ultra2", tz=TZ), link=link)
    emu.state.fill(20)
    meter_id = f"onetouch_ultra2:{emu.state.serial}"

    def state() -> str | None:
        return getattr(runtime.devices.get(meter_id), "state", None)

    async def scenario() -> None:
        runtime.desk.bind(asyncio.get_running_loop())
        emu.start()
        task = asyncio.create_task(source.run())
        await _until(lambda: state() == "done")
        clock.advance(2)  # a re-probe of the same meter changes nothing
        await asyncio.sleep(0.3)
        assert (state(), source.completed) == ("done", 1)
        emu.mute = True  # the meter is taken off the cable's jack; the USB cable stays
        clock.advance(2)
        await _until(lambda: state() == "unplugged")
        emu.mute = False
        emu.state.add_reading(150)  # back after a reading at home
        clock.advance(2)
        # Readings are stored before the session returns; wait for the download to finish too.
        await _until(lambda: store_readings.count_readings(store) == 21 and source.completed == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
    finally:
        emu.stop()
    assert source.completed == 2


def test_desk_request_downloads_for_the_patient_at_the_desk(tmp_path, store, clock) -> None:
    link = tmp_path / "ttyMETER"
    config = _config(tmp_path, link, auto_sync=False)
    runtime = Runtime(config=config, store=store, clock=clock)
    source = MeterSource(runtime)
    emu = SerialMeterEmulator(MeterState("freestyle_optium", tz=TZ), link=link)
    emu.state.fill(30)
    meter_id = f"freestyle_optium:{emu.state.serial}"

    async def scenario() -> None:
        runtime.desk.bind(asyncio.get_running_loop())
        task = asyncio.create_task(source.run())
        emu.start()
        await _until(lambda: getattr(runtime.devices.get(meter_id), "state", None) == "connected")
        assert store_readings.count_readings(store) == 0  # no auto-sync
        request = SerialSyncRequest(request_id="0" * 32, target=meter_id, patient_id="P-0042", operator="nurse1")
        runtime.desk.submit(request)
        await _until(lambda: getattr(runtime.progress.get("0" * 32), "state", None) == "done")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
    finally:
        emu.stop()
    rows = store.query("SELECT DISTINCT patient_id, session_id FROM readings")
    assert rows == [{"patient_id": "P-0042", "session_id": "0" * 32}]
    assert store_readings.count_readings(store) == 30


def test_cli_meters_sync_with_progress_bar(tmp_path, capsys) -> None:
    link = tmp_path / "ttyMETER"
    emu = SerialMeterEmulator(MeterState("onetouch_ultra2", tz=TZ), link=link)
    emu.state.fill(40)
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        f'[gateway]\nsite_id = "s"\ngateway_id = "g"\nstate_dir = "{tmp_path / "state"}"\n'
        '[clock]\nsync_check = "assume_synced"\n'
        "[meters.serial]\nresponse_timeout_s = 0.25\nprobe_timeout_s = 0.25\n",
        encoding="utf-8",
    )
    emu.start()
    try:
        code = main(["meters", "sync", str(link), "--patient", "P-7", "-c", str(config_file)])
    finally:
        emu.stop()
    out, err = capsys.readouterr()
    assert code == 0, (out, err)
    assert f"onetouch_ultra2:{emu.state.serial}: done, 40 received, 40 new" in out
    assert "40/40" in err
    assert main(["meters", "list", "-c", str(config_file)]) == 0
    out, _ = capsys.readouterr()
    assert f"onetouch_ultra2:{emu.state.serial}" in out
