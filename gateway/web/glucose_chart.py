"""The visit's glucose picture as inline SVG, drawn on the server (no script, no CDN, prints as it shows).

A time-of-day overlay: every reading since the last visit at its clinic-time hour (x, 0-24 h) and value (y), the
target range shaded, readings below range marked with a triangle pointing down and readings above the
hyperglycaemia line with a triangle pointing up (shape, not colour alone, carries the meaning). This module only
computes coordinates and labels; ``templates/_glucose_picture.html`` writes the SVG (Jinja escapes every text).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

from gateway.records import MGDL_PER_MMOLL
from gateway.services import VisitPicture

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 612, 12, 228
"""The plot area inside the viewBox (axis labels outside it)."""
Y_MIN_TOP_MMOL = 16.0
"""The y axis reaches at least this far (a calm picture is not stretched), and further for higher readings."""
Y_MAX_MMOL = 33.3
"""Meters read up to 33.3 mmol/L ("HI" above)."""
MARKS_WITH_TOOLTIPS = 500
"""Up to this many readings each mark is an SVG element with its own tooltip (time and value). Past it (a first
download can bring a meter's whole history) each kind of mark is one path: among thousands of marks no single
tooltip can be pointed at, and one element per reading made the page ~600 kB and ~0.2 s to draw for 5,000
readings. The readings themselves are in the session's table, a page at a time."""


class ChartPoint(NamedTuple):
    """One reading on the chart: where, and its tooltip. A NamedTuple rather than a frozen dataclass: a first
    download can put a meter's whole history, thousands of readings, on one chart."""

    x: float
    y: float
    label: str
    """Time and value, for the point's tooltip (``<title>``)."""


@dataclass(frozen=True, slots=True)
class ChartTick:
    """An axis label at ``pos`` (x or y in the viewBox)."""

    pos: float
    text: str


@dataclass(frozen=True, slots=True)
class MarkPaths:
    """A dense chart's marks: one SVG path of each kind (``d`` attributes: coordinates only, no text)."""

    normal: str
    low: str
    high: str


@dataclass(frozen=True, slots=True)
class GlucoseChart:
    """What the template draws."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    band_top: float
    band_bottom: float
    low_y: float
    very_high_y: float
    points: list[ChartPoint]
    """Readings from the low line up to the hyperglycaemia line (circles)."""
    lows: list[ChartPoint]
    """Readings below range (triangles pointing down)."""
    highs: list[ChartPoint]
    """Readings above the hyperglycaemia line (triangles pointing up)."""
    dense: MarkPaths | None
    """Past :data:`MARKS_WITH_TOOLTIPS` readings: the marks as three paths (the points then carry no label)."""
    x_ticks: list[ChartTick]
    y_ticks: list[ChartTick]


def display_value(mmol_l: float, unit: str) -> str:
    """A value in the pages' unit: mmol/L with one decimal, mg/dL whole."""
    return f"{mmol_l * MGDL_PER_MMOLL:.0f}" if unit == "mg/dL" else f"{mmol_l:.1f}"


def build_chart(picture: VisitPicture, *, unit: str, very_high: float, tz: ZoneInfo) -> GlucoseChart:
    """The chart of ``picture``'s readings: hours of the clinic's day across, glucose up."""
    ranges = picture.ranges
    highest = max((r.mmol_l for r in picture.readings), default=0.0)
    top_mmol = min(Y_MAX_MMOL, max(Y_MIN_TOP_MMOL, highest + 1.0))

    def y_of(mmol: float) -> float:
        return round(BOTTOM - (min(mmol, top_mmol) / top_mmol) * (BOTTOM - TOP), 1)

    def x_of(hour: float) -> float:
        return round(LEFT + hour / 24 * (RIGHT - LEFT), 1)

    dense = len(picture.readings) > MARKS_WITH_TOOLTIPS
    points: list[ChartPoint] = []
    lows: list[ChartPoint] = []
    highs: list[ChartPoint] = []
    for row in picture.readings:
        when = datetime.fromisoformat(row.corrected_time).astimezone(tz)
        mmol = row.mmol_l
        # "YYYY-MM-DD HH:MM" (isoformat: a third of strftime's cost, which counts at thousands of readings)
        label = "" if dense else f"{when.isoformat(' ', 'minutes')[:16]} · {display_value(mmol, unit)} {unit}"
        marks = lows if mmol < ranges.low else highs if mmol > very_high else points
        marks.append(ChartPoint(x_of(when.hour + when.minute / 60), y_of(mmol), label))
    levels = sorted({ranges.low, ranges.high, very_high, *(v for v in (20.0, 25.0, 30.0) if v < top_mmol)})
    return GlucoseChart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=RIGHT,
        top=TOP,
        bottom=BOTTOM,
        band_top=y_of(ranges.high),
        band_bottom=y_of(ranges.low),
        low_y=y_of(ranges.low),
        very_high_y=y_of(very_high),
        points=points,
        lows=lows,
        highs=highs,
        dense=_mark_paths(points, lows, highs) if dense else None,
        x_ticks=[ChartTick(x_of(h), f"{h:02d}:00") for h in range(0, 25, 3)],
        y_ticks=[ChartTick(y_of(v), display_value(v, unit)) for v in levels],
    )


def _mark_paths(points: list[ChartPoint], lows: list[ChartPoint], highs: list[ChartPoint]) -> MarkPaths:
    """The marks as the template draws them one by one (a circle of radius 3.5, triangles 10 wide and 9 high),
    each kind in one path."""
    return MarkPaths(
        normal="".join(f"M{p.x - 3.5:.1f},{p.y}a3.5,3.5 0 1,0 7,0a3.5,3.5 0 1,0 -7,0" for p in points),
        low="".join(f"M{p.x - 5:.1f},{p.y - 4:.1f}h10l-5,9z" for p in lows),
        high="".join(f"M{p.x - 5:.1f},{p.y + 4:.1f}h10l-5,-9z" for p in highs),
    )
