"""Bluetooth LE glucose meters (Glucose Service 0x1808) driver: RACP download over a :class:`BleLink`.

Beside the serial family drivers: a thin loop that shuttles bytes between the BLE transport
(:mod:`gateway.meters.transport.ble`, which alone imports bleak) and the pure codec
(:mod:`gateway.meters.codec.gls`), and implements :class:`~gateway.meters.MeterDriver` for
:class:`~gateway.meters.session.DownloadSession`. What it shares with the blood pressure cuff driver (link,
identity, clock, the RACP loop) is :class:`~gateway.meters.drivers.ble_gatt.BleGattDriver`.

Supports:

- :func:`scan`: meters advertising the Glucose Service on the configured adapter;
- :func:`open_driver`: connect (the transport's retries and pairing: the Glucose Feature read is the first
  access to the Glucose Service, where a meter that wants a bond says so), read Device Information (model,
  serial, firmware) and Current Time when present, subscribe to Glucose Measurement / Context notifications
  and RACP indications. ``count_records(since)`` asks the meter for the number of records with
  sequence > since (all on a first visit), ``records(since)`` reports them, each paired with its context by
  sequence number.
- "No records found", abort on close while a report runs, a link lost mid-transfer (DeviceDisconnected after
  yielding what arrived, so the session keeps it and resumes from the last stored sequence next time), a
  silent meter (DeviceTimeout), malformed frames (skipped, counted, reported as a RecordError at the end so
  the session records the problem while keeping every good record).

``meter_id`` is ``gls:<serial>`` (Device Information serial number), or ``gls:<address>`` without one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

from gateway.config import GatewayConfig
from gateway.errors import DeviceError
from gateway.meters.codec import gls
from gateway.meters.drivers.ble_gatt import TRANSPORT, BleGattDriver
from gateway.meters.transport.ble import BleLink
from gateway.meters.transport.ble import scan as scan_ble
from gateway.records import Health, Meal, Measures, MeterRecord, Tester, Unit

_logger = logging.getLogger(__name__)

FAMILY = "gls"

_MEALS = {
    gls.MealCode.PREPRANDIAL: Meal.BEFORE_MEAL,
    gls.MealCode.POSTPRANDIAL: Meal.AFTER_MEAL,
    gls.MealCode.FASTING: Meal.FASTING,
    gls.MealCode.CASUAL: Meal.CASUAL,
    gls.MealCode.BEDTIME: Meal.BEDTIME,
}
_TESTERS = {
    gls.Tester.SELF: Tester.SELF,
    gls.Tester.HEALTH_CARE_PROFESSIONAL: Tester.HEALTH_CARE_PROFESSIONAL,
    gls.Tester.LAB_TEST: Tester.LAB_TEST,
}
_HEALTH = {
    gls.Health.MINOR_HEALTH_ISSUES: Health.MINOR_HEALTH_ISSUES,
    gls.Health.MAJOR_HEALTH_ISSUES: Health.MAJOR_HEALTH_ISSUES,
    gls.Health.DURING_MENSES: Health.DURING_MENSES,
    gls.Health.UNDER_STRESS: Health.UNDER_STRESS,
    gls.Health.NO_HEALTH_ISSUES: Health.NO_HEALTH_ISSUES,
}
_UNITS = {"mg/dL": Unit.MG_DL, "mmol/L": Unit.MMOL_L}


@dataclass(frozen=True, slots=True)
class FoundMeter:
    """A meter seen advertising the Glucose Service."""

    address: str
    name: str | None
    rssi: int | None
    transport: str = TRANSPORT
    family: str = FAMILY


async def scan(config: GatewayConfig, timeout: float | None = None) -> list[FoundMeter]:
    """Meters advertising the Glucose Service on ``config.meters.ble.adapter``, strongest signal first."""
    seen = await scan_ble(config.meters.ble, [gls.GLUCOSE_SERVICE_UUID], timeout)
    return [FoundMeter(a.address, a.name, a.rssi) for a in seen if gls.GLUCOSE_SERVICE_UUID in a.service_uuids]


def to_meter_record(event: gls.Measurement) -> MeterRecord | None:
    """A decoded measurement (+ context) as the session's MeterRecord; None when it carries no glucose value."""
    m, ctx = event.measurement, event.context
    glucose = m.glucose()
    if glucose is None:
        return None
    value, unit_name = glucose
    flags: list[str] = []
    if m.sensor_status:
        flags.extend(f"sensor_{name}" for name in gls.sensor_status_names(m.sensor_status))
    if m.time_offset_min:
        flags.append("time_offset_applied")
    meal = tester = health = None
    if ctx is not None:
        meal = _MEALS.get(ctx.meal) if isinstance(ctx.meal, gls.MealCode) else None
        # "not available" and reserved nibbles say nothing: left out rather than coded
        tester = _TESTERS.get(ctx.tester) if isinstance(ctx.tester, gls.Tester) else None
        health = _HEALTH.get(ctx.health) if isinstance(ctx.health, gls.Health) else None
        if ctx.medication_id is not None:
            flags.append(f"medication_{gls.code_name(ctx.medication_id)}")
    control = (
        m.sample_type == gls.SampleType.CONTROL_SOLUTION or m.sample_location == gls.SampleLocation.CONTROL_SOLUTION
    )
    return MeterRecord(
        sequence=m.sequence,
        meter_time=m.time,
        value=float(value.quantize(Decimal("0.001")).normalize()),
        unit=_UNITS[unit_name],
        sample_type=gls.code_name(m.sample_type),
        sample_location=gls.code_name(m.sample_location),
        meal=meal,
        tester=tester,
        health=health,
        control_solution=control,
        flags=tuple(flags),
    )


class GlsDriver(BleGattDriver[gls.Event]):
    """A connected GLS meter (MeterDriver). Build it with :func:`open_driver`."""

    family = FAMILY
    measures = Measures.GLUCOSE

    async def setup(self, link: BleLink) -> None:
        """Check the service, read the feature (where a meter that wants a bond says so), identity, subscribe."""
        if not link.has_service(gls.GLUCOSE_SERVICE_UUID):
            raise DeviceError(f"{self.address} has no Glucose Service", device_id=self.device_id)
        # The feature read is the first access to the Glucose Service: a meter that wants a bond says so here.
        gls.parse_feature(await link.read(gls.GLUCOSE_FEATURE_UUID, self.ble.racp_timeout_s))
        await self.read_identity(link)
        await link.subscribe(gls.GLUCOSE_MEASUREMENT_UUID, gls.GLUCOSE_CONTEXT_UUID, gls.RACP_UUID)

    def new_download(self, since: int | None, *, count_first: bool) -> gls.GlsDownload:
        """The GLS RACP conversation."""
        return gls.GlsDownload(since, count_first=count_first)

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        """Report the records after ``since_sequence``, each paired with its context."""
        async for event in self.report(since_sequence):
            if isinstance(event, gls.Measurement):
                record = to_meter_record(event)
                if record is None:
                    self.skipped_no_value += 1
                    _logger.warning("meter %s: record %d has no glucose value; skipped", self.device_id,
                                    event.measurement.sequence)  # fmt: skip
                    continue
                self._yielded += 1
                yield record
            elif isinstance(event, gls.Context):
                _logger.info("meter %s: context %d matches no measurement", self.device_id, event.context.sequence)


async def open_driver(address: str, config: GatewayConfig) -> GlsDriver:
    """Connect to the GLS meter at ``address`` on ``config.meters.ble.adapter``; ready for a DownloadSession."""
    driver = GlsDriver(address, config.meters.ble)
    await driver.connect()
    return driver


__all__ = ["FoundMeter", "GlsDriver", "open_driver", "scan", "to_meter_record"]
