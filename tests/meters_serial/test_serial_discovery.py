"""Discovery: VID:PID table, hotplug of a pty appearing and disappearing, probing families, open_driver dispatch."""

from __future__ import annotations

import asyncio
import os
import tty
from pathlib import Path

import pytest
from support.serial_meters import FAST

from gateway.emulate.serial_meter import MeterState, SerialMeterEmulator
from gateway.errors import DeviceNotFound
from gateway.meters import discovery
from gateway.meters.transport.serial import PortInfo


def test_known_cables_and_unknown_devices() -> None:
    assert discovery.candidate_families(0x067B, 0x2303) == ("onetouch_ultraeasy", "onetouch_ultra2")
    assert discovery.candidate_families(0x1A61, 0x3410) == ("freestyle_optium",)
    assert set(discovery.candidate_families(0x0403, 0x6001)) == set(discovery.ALL_FAMILIES)
    assert discovery.candidate_families(0x1234, 0x5678) == ()  # e.g. a USB modem: never probed
    assert discovery.candidate_families(None, None) == ()


def test_watcher_reports_usb_ports_by_vid_pid_and_skips_onboard_uarts() -> None:
    listed = [
        PortInfo("/dev/ttyUSB0", 0x067B, 0x2303, "A1", "USB-Serial"),
        PortInfo("/dev/ttyS0", None, None, None, "ttyS0"),
        PortInfo("/dev/ttyACM0", 0x1234, 0x5678, None, "modem"),
    ]
    watcher = discovery.PortWatcher(lister=lambda: listed)
    added, removed = watcher.poll()
    assert {p.path: p.families for p in added} == {
        "/dev/ttyUSB0": ("onetouch_ultraeasy", "onetouch_ultra2"),
        "/dev/ttyACM0": (),
    }
    assert removed == []
    listed.pop(0)
    assert watcher.poll() == ([], ["/dev/ttyUSB0"])


def test_hotplug_of_a_pty_appearing_and_disappearing(tmp_path: Path) -> None:
    link = tmp_path / "ttyMETER"
    watcher = discovery.PortWatcher([str(link)], lister=list)
    assert watcher.poll() == ([], [])
    emu = SerialMeterEmulator(MeterState("onetouch_ultra2"), link=link)
    emu.start()
    try:
        added, removed = watcher.poll()
        assert [p.path for p in added] == [str(link)] and removed == []
        assert watcher.poll() == ([], [])
        emu.unplug()
        assert watcher.poll() == ([], [str(link)])
        emu.replug()
        assert [p.path for p in watcher.poll()[0]] == [str(link)]
    finally:
        emu.stop()


@pytest.mark.parametrize("family", ["onetouch_ultra2", "onetouch_ultraeasy", "freestyle_optium"])
def test_probing_identifies_each_family(family, emulators) -> None:
    emu = emulators(family, records=1)

    async def probe() -> str:
        driver = await discovery.identify(emu.port, discovery.ALL_FAMILIES, FAST)
        info = await driver.read_info()
        await driver.close()
        return info.meter_id

    assert asyncio.run(probe()) == f"{family}:{emu.state.serial}"


def test_a_silent_device_is_given_up_cleanly() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with pytest.raises(DeviceNotFound, match="no known meter answered"):
            asyncio.run(discovery.identify(os.ttyname(slave), discovery.ALL_FAMILIES, FAST))
    finally:
        os.close(master)
        os.close(slave)


def test_open_driver_dispatch(tmp_path: Path, monkeypatch) -> None:
    from gateway.config import parse_config
    from gateway.meters.drivers import bluetooth

    config = parse_config({"gateway": {"site_id": "s", "gateway_id": "g"}}, check_files=False)
    with pytest.raises(DeviceNotFound, match="no such serial port"):
        asyncio.run(discovery.open_driver(str(tmp_path / "nothing"), config))

    # A Bluetooth address goes to the Bluetooth drivers (GLS or cuff by the service the device offers; their own
    # tests run them against emulated BlueZ).
    seen: list[str] = []

    async def fake_ble_open(address: str, cfg: object) -> object:
        seen.append(address)
        return object()

    monkeypatch.setattr(bluetooth, "open_driver", fake_ble_open)
    asyncio.run(discovery.open_driver("AA:BB:CC:DD:EE:FF", config))
    assert seen == ["AA:BB:CC:DD:EE:FF"]
