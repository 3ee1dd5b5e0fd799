"""The UltraEasy driver against a meter whose link-control bits go wrong, on a real pty with real pyserial.

A real host must check the LifeScan link layer's sequence and expect-receive bits (issue 16 gap 4): when the
meter's bits fall out of step the driver re-opens the link and asks again, or, when they stay wrong, fails
with a :class:`~gateway.errors.LinkControlError` that names the bit, keeping every record that arrived.
Either way nothing is lost or stored twice.
"""

from __future__ import annotations

import asyncio
import logging

from support.serial_meters import download

from gateway.emulate.serial_meter import Fault
from gateway.meters.drivers import FLAG_DISPLAYS_MMOL_L
from gateway.store import readings as store_readings

FAMILY = ("onetouch_ultraeasy",)


def _values(store) -> list[tuple[str, float]]:
    return sorted((r["meter_time"], r["value"]) for r in store.query("SELECT meter_time, value FROM readings"))


def _held(emu) -> list[tuple[str, float]]:
    return sorted((r.meter_time.isoformat(), float(r.value_mg_dl)) for r in emu.state.readings)


def test_a_meter_send_bit_glitch_is_recovered_by_reopening_the_link(emulators, store, clock, caplog) -> None:
    emu = emulators("onetouch_ultraeasy", records=60, faults=[Fault("bad_link_bits", at_record=20)])
    with caplog.at_level(logging.WARNING, logger="gateway.meters"):
        result = asyncio.run(download(store, clock, emu.port, families=FAMILY))
    assert (result.state, result.received, result.added, result.duplicates) == ("done", 60, 60, 0), result.error
    assert _values(store) == _held(emu)  # every record, once
    assert "link out of step" in caplog.text and "re-opening" in caplog.text


def test_bits_that_stay_wrong_fail_clearly_and_keep_what_arrived_then_resume(emulators, store, clock) -> None:
    emu = emulators("onetouch_ultraeasy", records=60, faults=[Fault("bad_link_bits", at_record=20, times=99)])
    cut = asyncio.run(download(store, clock, emu.port, families=FAMILY))
    assert cut.state == "interrupted"
    assert cut.error is not None and cut.error.type == "LinkControlError"
    assert "sequence: expected" in cut.error.message and "control 0x" in cut.error.message
    assert store_readings.count_readings(store) == 20  # the 20 newest, nothing from the broken exchange
    assert store.query("SELECT last_error FROM meters")[0]["last_error"].startswith("LinkControlError")

    emu.state.faults.clear()  # the meter behaves again (another day, or after a power cycle)
    resumed = asyncio.run(download(store, clock, emu.port, families=FAMILY))
    assert (resumed.state, resumed.added, resumed.duplicates) == ("done", 40, 20), resumed.error
    assert _values(store) == _held(emu)


def test_a_hi_reading_is_kept_at_the_meters_limit_and_flagged(emulators, store, clock) -> None:
    """A real UltraMini stores HI (above 600 mg/dL) as 0xFFFF (Tidepool's driver); never 65535 mg/dL."""
    emu = emulators("onetouch_ultraeasy", records=3)
    emu.state.add_reading(0xFFFF)
    result = asyncio.run(download(store, clock, emu.port, families=FAMILY))
    assert (result.state, result.added) == ("done", 4), result.error
    newest = store.query("SELECT value, flags FROM readings ORDER BY meter_time DESC LIMIT 1")[0]
    assert newest["value"] == 600.0 and "above_meter_range" in newest["flags"]
    assert FLAG_DISPLAYS_MMOL_L not in newest["flags"]
