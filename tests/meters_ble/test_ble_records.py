"""From decoded GLS events to the session's MeterRecord: units, times, flags, meal, control solution."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from gateway.meters.codec import gls
from gateway.meters.codec.ieee11073 import Special
from gateway.meters.drivers.gls import to_meter_record
from gateway.records import Health, Meal, Unit
from gateway.records import Tester as ContextTester  # (not a pytest class)


def _measurement(**kw: object) -> gls.GlucoseMeasurement:
    base = {
        "flags": 0,
        "sequence": 17,
        "base_time": datetime(2026, 3, 1, 8, 0),
        "concentration": Decimal("0.00126"),
        "unit": gls.ConcentrationUnit.KG_PER_L,
        "sample_type": gls.SampleType.CAPILLARY_PLASMA,
        "sample_location": gls.SampleLocation.FINGER,
    }
    base.update(kw)
    return gls.GlucoseMeasurement(**base)  # type: ignore[arg-type]


def test_mg_dl_with_time_offset_status_and_context() -> None:
    m = _measurement(time_offset_min=30, sensor_status=gls.SensorStatus.BATTERY_LOW | gls.SensorStatus.RESULT_TOO_HIGH)
    ctx = gls.GlucoseContext(
        flags=0, sequence=17, meal=gls.MealCode.POSTPRANDIAL, tester=gls.Tester.SELF,
        health=gls.Health.UNDER_STRESS, medication_id=gls.MedicationId.LONG_ACTING_INSULIN,
    )  # fmt: skip
    record = to_meter_record(gls.Measurement(m, ctx))
    assert record is not None
    assert (record.sequence, record.value, record.unit) == (17, 126.0, Unit.MG_DL)
    assert record.meter_time == datetime(2026, 3, 1, 8, 30)  # base time + offset: the user facing time
    assert record.meal is Meal.AFTER_MEAL
    assert record.sample_type == "capillary_plasma" and record.sample_location == "finger"
    # tester and health are typed context (coded in the contract), not flag names
    assert (record.tester, record.health) == (ContextTester.SELF, Health.UNDER_STRESS)
    assert record.flags == (
        "sensor_battery_low", "sensor_result_too_high", "time_offset_applied", "medication_long_acting_insulin",
    )  # fmt: skip
    assert not record.control_solution


def test_mmol_l_and_control_solution() -> None:
    m = _measurement(
        concentration=Decimal("0.0072"),
        unit=gls.ConcentrationUnit.MOL_PER_L,
        sample_type=gls.SampleType.CONTROL_SOLUTION,
        sample_location=gls.SampleLocation.CONTROL_SOLUTION,
    )
    record = to_meter_record(gls.Measurement(m))
    assert record is not None and (record.value, record.unit) == (7.2, Unit.MMOL_L)
    assert record.control_solution and record.meal is None


def test_no_value_or_special_value_gives_no_record() -> None:
    assert to_meter_record(gls.Measurement(_measurement(concentration=None, unit=None))) is None
    for special in Special:
        assert to_meter_record(gls.Measurement(_measurement(concentration=special))) is None
