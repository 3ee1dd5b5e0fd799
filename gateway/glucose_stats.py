"""The summary clinicians read for a visit: count, mean, SD, CV, time in / below / above range, lowest, GMI.

Pure functions of glucose values in mmol/L (a control-solution result is never one of them: the store keeps those
apart). The ranges are the international consensus ones (Battelino et al., Diabetes Care 2019): in range
3.9-10.0 mmol/L, below < 3.9, above > 10.0; configurable (``[glucose]``). For finger-stick readings the
percentages are of readings, not of time.

GMI (glucose management indicator, an estimated HbA1c; Bergenstal et al., Diabetes Care 2018):
``GMI % = 3.31 + 0.02392 x mean mg/dL``. It was derived from at least 14 days of data, so it is given only when
the readings span at least ``gmi_min_days`` days and number at least ``gmi_min_readings``, and always labelled
an estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.records import MGDL_PER_MMOLL


@dataclass(frozen=True, slots=True)
class GlucoseRanges:
    """Where a value counts as below, in or above range (mmol/L), and the GMI's data rule."""

    low: float = 3.9
    high: float = 10.0
    gmi_min_days: float = 14.0
    gmi_min_readings: int = 28


@dataclass(frozen=True, slots=True)
class GlucoseSummary:
    """The figures of one set of readings (mmol/L; percentages 0-100). ``sd``/``cv`` need two readings,
    ``gmi`` the data rule of :class:`GlucoseRanges`; None where not given."""

    count: int
    mean: float | None
    sd: float | None
    cv: float | None
    below: float | None
    in_range: float | None
    above: float | None
    lowest: float | None
    highest: float | None
    span_days: float
    gmi: float | None


def mean(values: Sequence[float]) -> float | None:
    """The arithmetic mean, None for no values."""
    return sum(values) / len(values) if values else None


def sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n - 1), None for fewer than two values."""
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def cv(values: Sequence[float]) -> float | None:
    """The coefficient of variation, SD / mean x 100 (%); None without an SD or with a zero mean."""
    s, m = sd(values), mean(values)
    if s is None or not m:
        return None
    return s / m * 100


def in_ranges(values: Sequence[float], ranges: GlucoseRanges) -> tuple[float, float, float] | None:
    """% of values below ``low``, from ``low`` to ``high`` inclusive, above ``high``; None for no values."""
    if not values:
        return None
    n = len(values)
    below = sum(1 for v in values if v < ranges.low)
    above = sum(1 for v in values if v > ranges.high)
    return below / n * 100, (n - below - above) / n * 100, above / n * 100


def gmi_percent(mean_mmol_l: float) -> float:
    """The GMI (%) of a mean glucose: 3.31 + 0.02392 x mean in mg/dL."""
    return 3.31 + 0.02392 * mean_mmol_l * MGDL_PER_MMOLL


def span_days(times: Sequence[datetime]) -> float:
    """Days from the first to the last time (0 for fewer than two)."""
    if len(times) < 2:
        return 0.0
    return (max(times) - min(times)).total_seconds() / 86400


def summarize(values: Sequence[float], times: Sequence[datetime], ranges: GlucoseRanges) -> GlucoseSummary:
    """The visit's figures for readings ``values`` (mmol/L) taken at ``times`` (same order)."""
    shares = in_ranges(values, ranges)
    m = mean(values)
    days = span_days(times)
    enough = days >= ranges.gmi_min_days and len(values) >= ranges.gmi_min_readings
    return GlucoseSummary(
        count=len(values),
        mean=m,
        sd=sd(values),
        cv=cv(values),
        below=None if shares is None else shares[0],
        in_range=None if shares is None else shares[1],
        above=None if shares is None else shares[2],
        lowest=min(values) if values else None,
        highest=max(values) if values else None,
        span_days=days,
        gmi=gmi_percent(m) if m is not None and enough else None,
    )
