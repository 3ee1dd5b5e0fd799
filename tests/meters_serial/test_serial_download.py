"""Real pyserial in the gateway against each family's emulator on a real pty, through the shared DownloadSession.

Each test runs for all four families (OneTouch Ultra 2, OneTouch UltraEasy, FreeStyle Optium, TaiDoc TD-42xx).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from support.serial_meters import FAST, controls_in, download, stored_records

from gateway.emulate.serial_meter import Fault
from gateway.meters.drivers import FLAG_DISPLAYS_MMOL_L
from gateway.meters.session import FLAG_METER_CLOCK_IMPLAUSIBLE
from gateway.records import MGDL_PER_MMOLL, Unit
from gateway.store import qc as store_qc
from gateway.store import readings as store_readings

FAMILIES = ["onetouch_ultra2", "onetouch_ultraeasy", "freestyle_optium", "taidoc_td42xx"]
NEWEST_FIRST = {"onetouch_ultraeasy", "taidoc_td42xx"}
"""Read record by record, newest first: a later visit stops at the last complete download's newest record."""


def _outbox_glucose(store) -> int:
    return int(store.scalar("SELECT count(*) FROM outbox WHERE kind = 'glucose'"))


def _outbox_records(store) -> int:
    """Messages of meter records: readings (glucose) and control-solution results (qc)."""
    return int(store.scalar("SELECT count(*) FROM outbox WHERE kind IN ('glucose', 'qc')"))


@pytest.mark.parametrize("family", FAMILIES)
def test_full_download_then_nothing_new_then_only_the_new_reading(family, emulators, store, clock) -> None:
    emu = emulators(family, records=500)
    controls = controls_in(emu)  # control-solution tests: the meter's QC, stored apart from the readings
    first = asyncio.run(download(store, clock, emu.port, patient_id="P-0001"))
    assert (first.state, first.received, first.added, first.qc_added) == ("done", 500, 500 - controls, controls)
    meter_id = first.meter.meter_id
    assert meter_id == f"{family}:{emu.state.serial}"
    rows = store.query("SELECT meter_time, value, unit, sequence, patient_id FROM readings ORDER BY meter_time")
    expected = sorted(
        (r.meter_time.isoformat(), float(r.value_mg_dl)) for r in emu.state.readings if not r.control_solution
    )
    assert [(r["meter_time"], r["value"]) for r in rows] == expected
    assert {(r["unit"], r["sequence"], r["patient_id"]) for r in rows} == {("mg/dL", None, "P-0001")}
    assert _outbox_glucose(store) == 500 - controls
    assert _outbox_records(store) == 500

    first_bytes, before = emu.bytes_out, emu.bytes_out
    second = asyncio.run(download(store, clock, emu.port))
    if family in NEWEST_FIRST:  # stops at the first record it already has: nothing else crosses the cable
        assert (second.state, second.received, second.added, second.duplicates) == ("done", 0, 0, 0)
        assert emu.bytes_out - before < first_bytes / 20
    else:  # dump protocols send the whole memory; the store's identity keeps it from adding anything
        assert (second.state, second.received, second.added, second.duplicates) == ("done", 500, 0, 500)
    assert _outbox_records(store) == 500

    emu.state.add_reading(187)  # taken at home between visits
    third = asyncio.run(download(store, clock, emu.port))
    assert (third.state, third.added) == ("done", 1)
    assert third.received == (1 if family in NEWEST_FIRST else 500)  # a full memory drops its oldest
    assert _outbox_records(store) == 501
    new = store.query("SELECT value FROM readings WHERE session_id = ?", [third.session_id])
    assert [r["value"] for r in new] == [187.0]


@pytest.mark.parametrize("family", FAMILIES)
def test_unplug_at_record_200_then_resume(family, emulators, store, clock) -> None:
    emu = emulators(family, records=500, faults=[Fault("unplug", at_record=200)])
    cut = asyncio.run(download(store, clock, emu.port))
    assert cut.state in {"interrupted", "failed"}
    assert cut.error is not None and cut.error.type == "DeviceDisconnected"
    kept = stored_records(store)
    # Line-checksummed protocols keep every record that arrived; the Optium's dump is only trusted whole.
    assert kept == (0 if family == "freestyle_optium" else 200)
    assert not emu.plugged

    emu.replug()
    resumed = asyncio.run(download(store, clock, emu.port))
    assert (resumed.state, resumed.added + resumed.qc_added, resumed.duplicates) == ("done", 500 - kept, kept)
    assert stored_records(store) == 500
    assert store_qc.count_results(store) == controls_in(emu)
    assert _outbox_records(store) == 500


@pytest.mark.parametrize("family", FAMILIES)
def test_corrupt_frame_is_retried_and_the_session_completes(family, emulators, store, clock, caplog) -> None:
    emu = emulators(family, records=120, faults=[Fault("bad_checksum", at_record=37), Fault("garbage", at_record=80)])
    with caplog.at_level(logging.WARNING, logger="gateway.meters"):
        result = asyncio.run(download(store, clock, emu.port))
    assert (result.state, result.added + result.qc_added) == ("done", 120), result.error
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "checksum" in warnings or "CRC" in warnings
    # no glucose value from the damaged lines reaches the log
    damaged = {str(r.value_mg_dl) for r in emu.state.newest_first()[36:38]}
    assert not any(f" {v} " in warnings for v in damaged)


@pytest.mark.parametrize("family", FAMILIES)
def test_persistent_corruption_ends_with_a_clear_protocol_error_and_keeps_what_arrived(
    family, emulators, store, clock
) -> None:
    emu = emulators(family, records=60, faults=[Fault("bad_checksum", at_record=30, times=99)])
    result = asyncio.run(download(store, clock, emu.port))
    assert result.state in {"interrupted", "failed"}
    assert result.error is not None and result.error.type == "FrameError"
    assert "wire 0x" in result.error.message and "calculated 0x" in result.error.message
    kept = stored_records(store)
    assert kept == {"onetouch_ultra2": 59, "onetouch_ultraeasy": 30, "freestyle_optium": 0, "taidoc_td42xx": 30}[family]
    row = store.query("SELECT last_error FROM meters")[0]
    assert row["last_error"].startswith("FrameError")


@pytest.mark.parametrize("family", FAMILIES)
def test_silent_meter_times_out_cleanly(family, emulators, store, clock) -> None:
    emu = emulators(family, records=40, faults=[Fault("silence", at_record=10)])
    result = asyncio.run(download(store, clock, emu.port))
    assert result.state in {"interrupted", "failed"}
    assert result.error is not None and result.error.type == "DeviceTimeout"
    assert stored_records(store) == (0 if family == "freestyle_optium" else 10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("unit", [Unit.MG_DL, Unit.MMOL_L])
def test_mg_dl_and_mmol_l_meters(family, unit, emulators, store, clock) -> None:
    emu = emulators(family, records=20, unit=unit)
    result = asyncio.run(download(store, clock, emu.port))
    assert result.state == "done", result.error
    rows = store.query("SELECT value, unit, mmol_l, flags FROM readings")
    assert len(rows) == 20 - controls_in(emu)
    for row in rows:
        # values as the meter sends them (mg/dL on every serial protocol), canonical mmol/L alongside
        assert row["unit"] == "mg/dL"
        assert row["mmol_l"] == pytest.approx(row["value"] / MGDL_PER_MMOLL, abs=0.006)
        # The TaiDoc protocol does not say which unit the meter displays (glucometer-protocols issue 9).
        assert (FLAG_DISPLAYS_MMOL_L in row["flags"]) == (unit is Unit.MMOL_L and family != "taidoc_td42xx")


@pytest.mark.parametrize("family", FAMILIES)
def test_clock_three_years_off_is_corrected_and_flagged(family, emulators, store, clock) -> None:
    skew = -timedelta(days=3 * 365 + 1)
    emu = emulators(family, records=10, clock_skew=skew)
    result = asyncio.run(download(store, clock, emu.port))
    assert result.state == "done", result.error
    assert result.clock is not None and not result.clock.trusted
    assert FLAG_METER_CLOCK_IMPLAUSIBLE in result.clock.flags
    assert result.clock.offset_s == pytest.approx(-skew.total_seconds(), abs=120)
    rows = store.query("SELECT meter_time, corrected_time, time_trusted, flags FROM readings")
    assert {r["time_trusted"] for r in rows} == {0}
    assert all(FLAG_METER_CLOCK_IMPLAUSIBLE in r["flags"] for r in rows)
    newest = max(rows, key=lambda r: r["meter_time"])
    assert newest["meter_time"] < "2024"  # the meter's own (wrong) clock is kept
    assert newest["corrected_time"] >= clock.now.strftime("%Y")  # corrected back to this year


@pytest.mark.parametrize("family", FAMILIES)
def test_meter_clock_is_set_only_when_configured(family, emulators, store, clock) -> None:
    emu = emulators(family, records=3, clock_skew=timedelta(days=-1100))
    asyncio.run(download(store, clock, emu.port, set_meter_clock=False))
    assert emu.state.clock_skew < timedelta(days=-1099)
    asyncio.run(download(store, clock, emu.port, set_meter_clock=True))
    assert abs(emu.state.clock_skew) < timedelta(minutes=2)


@pytest.mark.parametrize("family", ["freestyle_optium", "taidoc_td42xx"])
def test_a_meter_ignoring_its_first_command_is_retried(family, emulators, store, clock) -> None:
    emu = emulators(family, records=5, ignore_first_command=True)
    result = asyncio.run(download(store, clock, emu.port, families=(family,), timeouts=FAST))
    assert (result.state, result.added) == ("done", 5)


@pytest.mark.parametrize("family", ["onetouch_ultra2", "taidoc_td42xx"])
def test_control_solution_tests_go_to_qc_and_meal_marks_reach_the_readings(family, emulators, store, clock) -> None:
    """Issue 16 gap 1: a control-solution test is the meter's quality control, never the patient's reading."""
    emu = emulators(family, records=200)
    result = asyncio.run(download(store, clock, emu.port, patient_id="P-0001"))
    readings = {(r["meter_time"], r["value"]): r for r in store.query("SELECT * FROM readings")}
    controls = {(r["meter_time"], r["value"]): r for r in store.query("SELECT * FROM qc_results")}
    for reading in emu.state.readings:
        key = (reading.meter_time.isoformat(), float(reading.value_mg_dl))
        if reading.control_solution:
            assert key in controls and key not in readings
            assert controls[key]["session_id"] == result.session_id
        else:
            assert key in readings and key not in controls
            assert readings[key]["meal"] == (None if reading.meal is None else str(reading.meal))
    assert len(controls) == result.qc_added == controls_in(emu) > 0
    assert "patient_id" not in store.query("SELECT * FROM qc_results LIMIT 1")[0]  # no patient column at all
    assert not store.query("SELECT 1 FROM readings WHERE control_solution != 0")
    assert any(r.meal for r in emu.state.readings)


def test_newest_first_meter_reads_past_a_cut_download_and_a_clock_reset(emulators, store, clock) -> None:
    """Only a complete download moves the stop mark; memory order, not meter time, decides what is new."""
    emu = emulators("onetouch_ultraeasy", records=50)
    assert asyncio.run(download(store, clock, emu.port)).added == 50
    now = emu.state.now()
    for minutes, value in ((1, 150), (2, 160), (3, 170)):
        emu.state.add_reading(value, meter_time=now + timedelta(minutes=minutes))
    emu.state.faults.append(Fault("unplug", at_record=1))  # the newest (170) arrives, then the cable is pulled
    cut = asyncio.run(download(store, clock, emu.port))
    assert (cut.state, cut.added) == ("interrupted", 1)

    emu.replug()
    # the battery was changed meanwhile: the meter's clock restarted years back, and a reading was taken
    emu.state.add_reading(99, meter_time=now - timedelta(days=3 * 365))
    resumed = asyncio.run(download(store, clock, emu.port))
    # the reset-clock reading, 170 again (a duplicate), 160 and 150: then the previous complete download's newest
    assert (resumed.state, resumed.received, resumed.added, resumed.duplicates) == ("done", 4, 3, 1)
    values = [r["value"] for r in store.query("SELECT value FROM readings ORDER BY id DESC LIMIT 4")]
    assert sorted(values) == [99.0, 150.0, 160.0, 170.0]
    assert store_readings.count_readings(store) == 54

    again = asyncio.run(download(store, clock, emu.port))
    assert (again.state, again.received) == ("done", 0)  # the mark moved to the reset-clock reading
