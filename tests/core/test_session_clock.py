"""Clock correction of meter times (pure): offset, corrected UTC time, trust flags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.meters.session import (
    FLAG_GATEWAY_CLOCK_UNSYNCED,
    FLAG_METER_CLOCK_IMPLAUSIBLE,
    FLAG_METER_CLOCK_UNKNOWN,
    measure_clock,
)

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
YEAR = timedelta(days=365)


def test_meter_five_minutes_slow_is_corrected_and_trusted() -> None:
    c = measure_clock(datetime(2026, 11, 23, 9, 55), NOW, tz=SH, gateway_synchronised=True, max_skew=YEAR)
    assert c.offset_s == 300 and c.trusted and c.flags == ()
    assert c.correct(datetime(2026, 11, 20, 7, 55), SH) == datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


def test_meter_three_years_off_is_corrected_but_flagged_untrusted() -> None:
    meter_now = datetime(2023, 11, 23, 10, 0)
    c = measure_clock(meter_now, NOW, tz=SH, gateway_synchronised=True, max_skew=YEAR)
    assert not c.trusted and FLAG_METER_CLOCK_IMPLAUSIBLE in c.flags
    assert c.correct(datetime(2023, 11, 22, 10, 0), SH) == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


def test_unsynchronised_gateway_clock_means_untrusted() -> None:
    c = measure_clock(datetime(2026, 11, 23, 10, 0), NOW, tz=SH, gateway_synchronised=False, max_skew=YEAR)
    assert not c.trusted and c.flags == (FLAG_GATEWAY_CLOCK_UNSYNCED,)


def test_meter_without_a_clock_keeps_its_times_untrusted() -> None:
    c = measure_clock(None, NOW, tz=SH, gateway_synchronised=True, max_skew=YEAR)
    assert (c.offset_s, c.trusted, c.flags) == (0.0, False, (FLAG_METER_CLOCK_UNKNOWN,))
