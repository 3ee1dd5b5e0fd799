"""The visit summary's figures (issue 14, nurse 4), checked against values worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.glucose_stats import GlucoseRanges, cv, gmi_percent, in_ranges, mean, sd, span_days, summarize

# 5.0, 7.0, 9.0, 3.0, 12.0 mmol/L: sum 36, mean 7.2; deviations -2.2 -0.2 1.8 -4.2 4.8, squares
# 4.84 + 0.04 + 3.24 + 17.64 + 23.04 = 48.8; / (5 - 1) = 12.2; SD = sqrt(12.2) = 3.49285...; CV = 48.51 %.
VALUES = [5.0, 7.0, 9.0, 3.0, 12.0]
T0 = datetime(2026, 11, 1, 7, 0, tzinfo=UTC)


def test_mean_sd_cv_by_hand() -> None:
    assert mean(VALUES) == pytest.approx(7.2)
    assert sd(VALUES) == pytest.approx(3.492850, abs=1e-6)
    assert cv(VALUES) == pytest.approx(48.5118, abs=1e-3)
    assert mean([]) is None and sd([5.0]) is None and cv([5.0]) is None


def test_ranges_are_the_consensus_ones_with_inclusive_limits() -> None:
    # one below (3.0), one above (12.0), three in: 20 / 60 / 20 %
    assert in_ranges(VALUES, GlucoseRanges()) == pytest.approx((20.0, 60.0, 20.0))
    # 3.9 and 10.0 themselves are in range; 3.8 below, 10.1 above
    assert in_ranges([3.9, 10.0, 3.8, 10.1], GlucoseRanges()) == pytest.approx((25.0, 50.0, 25.0))
    assert in_ranges([], GlucoseRanges()) is None


def test_gmi_by_hand() -> None:
    # 154 mg/dL (8.548 mmol/L): 3.31 + 0.02392 x 154 = 6.99 % (Bergenstal 2018, table 1: 7.0 %)
    assert gmi_percent(154 / 18.016) == pytest.approx(6.99368, abs=1e-5)
    # 7.2 mmol/L = 129.7152 mg/dL: 3.31 + 3.102788 = 6.412788 %
    assert gmi_percent(7.2) == pytest.approx(6.412788, abs=1e-6)


def test_gmi_only_with_enough_days_and_readings() -> None:
    ranges = GlucoseRanges(gmi_min_days=14, gmi_min_readings=28)
    values = [7.2] * 28
    enough = [T0 + timedelta(days=14) * i / 27 for i in range(28)]  # exactly 14 days, 28 readings
    assert span_days(enough) == pytest.approx(14.0)
    assert summarize(values, enough, ranges).gmi == pytest.approx(6.412788, abs=1e-6)
    short = [T0 + timedelta(days=13.9) * i / 27 for i in range(28)]
    assert summarize(values, short, ranges).gmi is None
    assert summarize(values[:27], enough[:27], ranges).gmi is None


def test_summary_of_the_hand_example() -> None:
    times = [T0 + timedelta(hours=6 * i) for i in range(5)]
    s = summarize(VALUES, times, GlucoseRanges())
    assert (s.count, s.lowest, s.highest) == (5, 3.0, 12.0)
    assert (s.mean, s.below, s.in_range, s.above) == pytest.approx((7.2, 20.0, 60.0, 20.0))
    assert s.span_days == pytest.approx(1.0) and s.gmi is None
    empty = summarize([], [], GlucoseRanges())
    assert (empty.count, empty.mean, empty.lowest, empty.gmi) == (0, None, None, None)
