"""The typed desk protocol end to end: requests routed by type (an unserved type is refused with a typed error),
typed progress and device records on the boards, errors kept as data from the session to the pages' JSON."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.daemon import build_components
from gateway.desk import (
    BleSyncRequest,
    DeskRequest,
    DeskState,
    DeviceEntry,
    DeviceKind,
    DeviceState,
    MeterProgress,
    SerialSyncRequest,
)
from gateway.emulate.serial_meter import Fault
from gateway.errors import DeskUnavailable, ErrorInfo
from gateway.meters import source as meter_source
from gateway.meters.source import MeterSource
from gateway.runtime import DeskBus, Runtime
from gateway.services import GatewayServices
from gateway.store import Store


def _runtime(tmp_path: Path, store: Store, clock, *, ble: bool = False) -> Runtime:  # type: ignore[no-untyped-def]
    config = parse_config(
        {
            "gateway": {"site_id": "chc-test", "gateway_id": "gw-test", "state_dir": str(tmp_path / "state")},
            "clock": {"sync_check": "assume_synced"},
            "meters": {
                "serial": {"enabled": True, "response_timeout_s": 1.0, "probe_timeout_s": 1.0},
                "ble": {"enabled": ble},
            },
        },
        check_files=False,
    )
    return Runtime(config=config, store=store, clock=clock)


@dataclass(frozen=True, slots=True, kw_only=True)
class StrayRequest(DeskRequest):
    """A request type no component serves."""


def test_a_request_nobody_serves_is_refused_with_a_typed_error() -> None:
    bus = DeskBus()
    loop = asyncio.new_event_loop()
    try:
        bus.bind(loop)
        queue = bus.queue(SerialSyncRequest)
        for request in (StrayRequest(request_id="x"), BleSyncRequest(request_id="b", target="AA:BB:CC:DD:EE:FF")):
            with pytest.raises(DeskUnavailable) as refused:
                bus.submit(request)
            assert refused.value.request_type == type(request).__name__  # routed by exact type, never by a string
        served = SerialSyncRequest(request_id="s", target="/dev/ttyUSB0")
        bus.submit(served)
        loop.run_until_complete(asyncio.sleep(0))
        assert queue.get_nowait() is served
    finally:
        loop.close()


def test_the_facade_refuses_a_transport_that_is_off_and_leaves_nothing(tmp_path, store, clock) -> None:
    runtime = _runtime(tmp_path, store, clock)
    loop = asyncio.new_event_loop()
    try:
        runtime.desk.bind(loop)
        runtime.components = build_components(runtime, (meter_source.components,))  # declares what it serves
        assert runtime.desk.handles(SerialSyncRequest) and not runtime.desk.handles(BleSyncRequest)
        services = GatewayServices(runtime)
        with pytest.raises(DeskUnavailable) as refused:
            services.request_meter_sync("AA:BB:CC:DD:EE:FF", patient_id="P-1", operator="nina")
        assert refused.value.request_type == "BleSyncRequest"
        assert runtime.progress.items() == [] and store.scalar("SELECT count(*) FROM audit") == 0
        session_id = services.request_meter_sync("/dev/ttyUSB7", patient_id="P-1", operator="nina")
        queued = runtime.progress.get(session_id)
        assert queued == MeterProgress(state=DeskState.QUEUED, target="/dev/ttyUSB7")
    finally:
        loop.close()


def test_progress_and_devices_are_typed_records_with_errors_as_data(tmp_path, store, clock, emulators) -> None:
    emu = emulators("onetouch_ultra2", records=30, faults=[Fault("unplug", at_record=10)])
    runtime = _runtime(tmp_path, store, clock)
    source = MeterSource(runtime)
    request = SerialSyncRequest(request_id="d" * 32, target=emu.port, patient_id="P-0042", operator="nina")

    result = asyncio.run(source.sync(request))

    assert result is not None and result.state is DeskState.INTERRUPTED
    assert result.error is not None and result.error.type == "DeviceDisconnected"  # the exception's type, as data
    meter_id = f"onetouch_ultra2:{emu.state.serial}"
    progress = runtime.progress.get(request.request_id)
    assert isinstance(progress, MeterProgress)
    assert (progress.state, progress.target, progress.meter_id, progress.added) == (
        DeskState.INTERRUPTED, emu.port, meter_id, 10,
    )  # fmt: skip
    assert progress.error == result.error
    device = runtime.devices.get(meter_id)
    assert device == DeviceEntry(
        kind=DeviceKind.METER, state=DeviceState.INTERRUPTED, transport="serial", family="onetouch_ultra2",
        last_error=result.error,
    )  # fmt: skip
    # The pages read typed fields; the status JSON serialises them explicitly.
    services = GatewayServices(runtime)
    view = next(d for d in services.devices() if d.device_id == meter_id)
    assert (view.state, view.last_error, view.family) == ("interrupted", "DeviceDisconnected", "onetouch_ultra2")
    assert json.loads(json.dumps(view.as_json()))["last_error"] == "DeviceDisconnected"
    desk = services.progress(request.request_id)
    assert desk is not None and desk.patient_id == "P-0042" and desk.meter_id == meter_id and desk.finished
    assert desk.error_text == str(result.error) and str(result.error).startswith("DeviceDisconnected: ")


def test_a_meter_that_is_not_plugged_in_fails_with_the_error_type(tmp_path, store, clock) -> None:
    runtime = _runtime(tmp_path, store, clock)
    request = SerialSyncRequest(request_id="e" * 32, target="onetouch_ultra2:NOT-HERE")
    assert asyncio.run(MeterSource(runtime).sync(request)) is None
    progress = runtime.progress.get(request.request_id)
    assert isinstance(progress, MeterProgress) and progress.state is DeskState.FAILED
    assert progress.error is not None and progress.error.type == "DeviceNotFound"
    assert isinstance(progress.error, ErrorInfo)
