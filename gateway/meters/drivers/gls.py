"""Bluetooth LE glucose meters (Glucose Service 0x1808) driver: RACP download over a :class:`BleLink`.

Beside the serial family drivers: a thin loop that shuttles bytes between the BLE transport
(:mod:`gateway.meters.transport.ble`, which alone imports bleak) and the pure codec
(:mod:`gateway.meters.codec.gls`), and implements :class:`~gateway.meters.MeterDriver` for
:class:`~gateway.meters.session.DownloadSession`.

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

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from gateway.config import BleSection, GatewayConfig
from gateway.errors import DeviceDisconnected, DeviceError, DeviceTimeout, ProtocolError, RecordError
from gateway.meters.codec import gls
from gateway.meters.transport.ble import BleLink
from gateway.meters.transport.ble import scan as scan_ble
from gateway.records import Meal, MeterInfo, MeterRecord, Unit

_logger = logging.getLogger(__name__)

FAMILY = "gls"
TRANSPORT = "ble"

_MEALS = {
    gls.MealCode.PREPRANDIAL: Meal.BEFORE_MEAL,
    gls.MealCode.POSTPRANDIAL: Meal.AFTER_MEAL,
    gls.MealCode.FASTING: Meal.FASTING,
    gls.MealCode.CASUAL: Meal.CASUAL,
    gls.MealCode.BEDTIME: Meal.BEDTIME,
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
    meal = None
    if ctx is not None:
        meal = _MEALS.get(ctx.meal) if isinstance(ctx.meal, gls.MealCode) else None
        if ctx.tester is not None:
            flags.append(f"tester_{gls.code_name(ctx.tester)}")
        if ctx.health is not None:
            flags.append(f"health_{gls.code_name(ctx.health)}")
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
        control_solution=control,
        flags=tuple(flags),
    )


class GlsDriver:
    """A connected GLS meter (MeterDriver). Build it with :func:`open_driver`."""

    newest_first = False  # RACP filters on the sequence number instead

    def __init__(self, address: str, ble: BleSection) -> None:
        self.address = address
        self.ble = ble
        self.link = BleLink(address, ble, device_id=f"{FAMILY}:{address}")
        self.malformed: list[str] = []
        self.skipped_no_value = 0
        self._yielded = 0
        self._download: gls.GlsDownload | None = None
        self._info: MeterInfo | None = None
        self._has_current_time = False

    @property
    def device_id(self) -> str:
        """The meter id once known (``gls:<address>`` before), as errors and logs name it."""
        return self.link.device_id

    @property
    def paired(self) -> bool:
        """True when the meter demanded pairing and the gateway paired with it."""
        return self.link.paired

    async def connect(self) -> None:
        """Connect (with the transport's retries and pairing) and set the meter up."""
        await self.link.connect(self._setup)

    async def _setup(self, link: BleLink) -> None:
        if not link.has_service(gls.GLUCOSE_SERVICE_UUID):
            raise DeviceError(f"{self.address} has no Glucose Service", device_id=self.device_id)
        # The feature read is the first access to the Glucose Service: a meter that wants a bond says so here.
        gls.parse_feature(await link.read(gls.GLUCOSE_FEATURE_UUID, self.ble.racp_timeout_s))
        self._has_current_time = link.has_characteristic(gls.CURRENT_TIME_UUID)
        self._info = await self._read_info(link)
        await link.subscribe(gls.GLUCOSE_MEASUREMENT_UUID, gls.GLUCOSE_CONTEXT_UUID, gls.RACP_UUID)

    async def _read_info(self, link: BleLink) -> MeterInfo:
        strings: dict[str, str | None] = {}
        for key, uuid in (
            ("model", gls.MODEL_NUMBER_UUID),
            ("serial", gls.SERIAL_NUMBER_UUID),
            ("firmware", gls.FIRMWARE_REVISION_UUID),
        ):
            if not link.has_characteristic(uuid):
                strings[key] = None
                continue
            strings[key] = gls.parse_dis_string(await link.read(uuid, self.ble.racp_timeout_s), key) or None
        serial = strings["serial"]
        return MeterInfo(
            meter_id=f"{FAMILY}:{serial or self.address}",
            family=FAMILY,
            transport=TRANSPORT,
            serial=serial or self.address,
            model=strings["model"],
            firmware=strings["firmware"],
            address=self.address,
        )

    # -- MeterDriver --------------------------------------------------------------------------------------------
    async def read_info(self) -> MeterInfo:
        """Identity from Device Information (read at connect)."""
        if self._info is None:
            raise DeviceError(f"{self.address}: not connected", device_id=self.device_id)
        self.link.device_id = self._info.meter_id
        return self._info

    async def read_clock(self) -> datetime | None:
        """The meter's Current Time, or None when it has no Current Time Service."""
        if not self._has_current_time:
            return None
        return gls.parse_current_time(await self.link.read(gls.CURRENT_TIME_UUID, self.ble.racp_timeout_s)).time

    async def count_records(self, since_sequence: int | None) -> int | None:
        """Records with sequence > ``since_sequence`` (all when None), from RACP "report number"."""
        self._download = gls.GlsDownload(since_sequence)
        for data in self._download.start():
            await self._write_racp(data)
        async for event in self._events(self.ble.racp_timeout_s):
            if isinstance(event, gls.RecordCount):
                return event.count  # with 0 the download is already finished ("no records")
            if isinstance(event, gls.NoRecords):
                return 0
            if isinstance(event, gls.RacpFailed):
                # Some meters do not implement "report number": report without knowing N.
                _logger.info("meter %s does not count records (%s)", self.device_id, gls.code_name(event.code))
                self._download = None
                return None
        return None

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        """Report the records after ``since_sequence``, each paired with its context."""
        download = self._download
        if download is not None and download.since == since_sequence and download.finished:
            return  # the count said "no records"
        if download is not None and download.since == since_sequence and download.state is gls.DownloadState.COUNTED:
            writes = download.report()
        else:
            self._download = gls.GlsDownload(since_sequence, count_first=False)
            writes = self._download.start()
        for data in writes:
            await self._write_racp(data)
        self._yielded = 0
        async for event in self._events(self.ble.record_timeout_s):
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
            elif isinstance(event, gls.RacpFailed):
                raise DeviceError(
                    f"{self.device_id} refused the report: {gls.code_name(event.code)}", device_id=self.device_id
                )
            elif isinstance(event, gls.Complete | gls.NoRecords):
                break
        if self.malformed:
            raise RecordError(
                f"{self.device_id}: {len(self.malformed)} malformed frame(s) skipped, first: {self.malformed[0]}"
            )

    async def set_clock(self, meter_time: datetime) -> None:
        """Setting a GLS meter's clock is not supported (Current Time is read-only on most meters)."""
        _logger.info("meter %s: setting the clock over BLE is not supported", self.device_id)

    async def close(self) -> None:
        """Abort a running report (best effort), then disconnect."""
        download = self._download
        if download is not None and self.link.is_connected and not download.finished:
            for data in download.abort():
                with contextlib.suppress(DeviceError, ProtocolError):
                    await self._write_racp(data)
        await self.link.disconnect()

    # -- plumbing ---------------------------------------------------------------------------------------------
    async def _write_racp(self, data: bytes) -> None:
        await self.link.write(gls.RACP_UUID, data, self.ble.racp_timeout_s)

    async def _events(self, timeout_s: float) -> AsyncIterator[gls.Event]:
        """Events from the download as notifications arrive; raises on link loss or silence."""
        assert self._download is not None
        while True:
            try:
                item = await asyncio.wait_for(self.link.notifications.get(), timeout_s)
            except TimeoutError:
                raise DeviceTimeout(
                    f"{self.device_id}: no answer for {timeout_s:.0f} s ({self._yielded} records received)",
                    device_id=self.device_id,
                ) from None
            if item is None:  # link lost
                for held in self._download.connection_lost():
                    yield held
                kept = self._yielded
                raise DeviceDisconnected(
                    f"{self.device_id}: link lost after {kept} records", device_id=self.device_id, records_kept=kept
                )
            try:
                events = self._download.receive(item.uuid, item.data)
            except ProtocolError as exc:
                if item.uuid == gls.RACP_UUID:
                    raise  # the conversation itself is broken: give up (the session keeps what arrived)
                self.malformed.append(str(exc))
                _logger.warning("meter %s: malformed %s frame skipped: %s", self.device_id, item.uuid[4:8], exc)
                continue
            for event in events:
                yield event


async def open_driver(address: str, config: GatewayConfig) -> GlsDriver:
    """Connect to the GLS meter at ``address`` on ``config.meters.ble.adapter``; ready for a DownloadSession."""
    driver = GlsDriver(address, config.meters.ble)
    await driver.connect()
    return driver


__all__ = ["FoundMeter", "GlsDriver", "open_driver", "scan", "to_meter_record"]
