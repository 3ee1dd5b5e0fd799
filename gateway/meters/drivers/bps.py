"""Bluetooth LE blood pressure cuffs (Blood Pressure Service 0x1810) driver, over a :class:`BleLink`.

Beside the GLS driver, on the same base (:class:`~gateway.meters.drivers.ble_gatt.BleGattDriver`: link with
retries and pairing, Device Information identity, Current Time, the RACP loop): bytes from the BLE transport go
to the pure codec (:mod:`gateway.meters.codec.bps`), and out come :class:`~gateway.records.CuffRecord` for the
one :class:`~gateway.meters.session.DownloadSession` (cursor, clock correction, patient and cuff user, dedupe).

Supports:

- pairing: the Blood Pressure Feature read is the first access to the service, where a cuff that wants a bond
  says so (cuffs usually do); the transport then reconnects with pairing, once;
- the two ways cuffs hand over their memory, chosen by what the cuff offers:

  * stored records (BLS 1.1: a Blood Pressure Record 0x2B36 and a Record Access Control Point): RACP "report
    number" then "report stored records" with ``>= last stored + 1`` (all on a first visit), exactly as for a
    glucose meter; a link lost mid-transfer is DeviceDisconnected after handing over what arrived, and the next
    visit resumes after the last stored sequence;
  * indications (BLS 1.0, most cuffs): once the Measurement 0x2A35 is subscribed (when the session asks for
    the records, after identity and clock), the cuff indicates the measurements it has not delivered to this
    gateway yet, then ends the connection (or goes quiet for ``meters.ble.cuff_quiet_s``): that is the end of
    the download. A cuff resends what was not confirmed, and the store's identity drops what it already has;

- Intermediate Cuff Pressure 0x2A36 notifications (a measurement running while connected) are counted and
  skipped; malformed frames are skipped, counted and reported as a RecordError at the end (every good
  measurement is kept); a measurement whose systolic or diastolic pressure is an IEEE special (NaN, NRes,
  +/-INF) is not a reading (logged with cuff id and sequence); a special mean arterial pressure or pulse rate
  is left out, with a flag saying which.

``meter_id`` is ``bps:<serial>`` (Device Information serial number), or ``bps:<address>`` without one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal

from gateway.config import BleSection, GatewayConfig
from gateway.errors import DeviceError, ProtocolError
from gateway.meters.codec import bps
from gateway.meters.codec.ieee11073 import Number, Special
from gateway.meters.drivers.ble_gatt import BleGattDriver
from gateway.meters.transport.ble import BleLink
from gateway.records import CuffRecord, CuffStatus, Measures

_logger = logging.getLogger(__name__)

FAMILY = "bps"
FLAG_CUFF_TIME_ABSENT = "cuff_time_absent"
"""The cuff sent no time stamp: the reading carries the gateway's time of the download, not trusted."""
_STATUS = {str(s): s for s in CuffStatus}


def _value(number: Number | None, name: str, flags: list[str]) -> float | None:
    """A measured value as a float; a Special is no value, noted in ``flags`` (``mean_arterial_nan``)."""
    if isinstance(number, Special):
        flags.append(f"{name}_{number.name.lower()}")
        return None
    return None if number is None else float(number.normalize())


def to_cuff_record(m: bps.BloodPressureMeasurement, sequence: int | None = None) -> CuffRecord | None:
    """A decoded measurement as the session's CuffRecord; None when systolic or diastolic is no number."""
    if not isinstance(m.systolic, Decimal) or not isinstance(m.diastolic, Decimal):
        return None
    flags: list[str] = []
    mean = _value(m.mean_arterial, "mean_arterial", flags)
    pulse = _value(m.pulse_rate, "pulse_rate", flags)
    status: list[CuffStatus] = []
    for name in bps.status_names(m.status or 0):
        if name in _STATUS:
            status.append(_STATUS[name])
        else:
            flags.append(f"cuff_status_{name}")  # reserved bits and the reserved pulse range: kept, not coded
    if m.time_stamp is None:
        flags.append(FLAG_CUFF_TIME_ABSENT)
    return CuffRecord(
        sequence=sequence,
        meter_time=m.time_stamp,
        user_id=None if m.user_id in (None, bps.UNKNOWN_USER) else m.user_id,
        systolic=float(m.systolic.normalize()),
        diastolic=float(m.diastolic.normalize()),
        mean_arterial=mean,
        unit=m.unit,
        pulse_bpm=pulse,
        status=tuple(status),
        flags=tuple(flags),
    )


class BpsDriver(BleGattDriver[bps.BpsEvent]):
    """A connected blood pressure cuff (MeterDriver). Build it with :func:`open_driver`."""

    family = FAMILY
    measures = Measures.BLOOD_PRESSURE

    def __init__(self, address: str, ble: BleSection, *, link: BleLink | None = None) -> None:
        super().__init__(address, ble, link=link)
        self.features = bps.BloodPressureFeature(0)
        self.stored_records = False
        """The cuff offers its memory through a Record Access Control Point (BLS 1.1)."""
        self.intermediate = 0
        """Intermediate Cuff Pressure notifications seen (a measurement ran while connected)."""

    async def setup(self, link: BleLink) -> None:
        """Check the service, read the feature (where a cuff that wants a bond says so), identity, subscribe."""
        if not link.has_service(bps.BLOOD_PRESSURE_SERVICE_UUID):
            raise DeviceError(f"{self.address} has no Blood Pressure Service", device_id=self.device_id)
        self.features = bps.parse_feature(await link.read(bps.BLOOD_PRESSURE_FEATURE_UUID, self.ble.racp_timeout_s))
        self.stored_records = link.has_characteristic(bps.BLOOD_PRESSURE_RECORD_UUID) and link.has_characteristic(
            bps.RACP_UUID
        )
        await self.read_identity(link)
        if self.stored_records:
            # Everything comes as records through the RACP; a measurement taken now is stored and reported there.
            await link.subscribe(bps.BLOOD_PRESSURE_RECORD_UUID, bps.RACP_UUID)
            return
        if link.has_characteristic(bps.INTERMEDIATE_CUFF_PRESSURE_UUID):
            await link.subscribe(bps.INTERMEDIATE_CUFF_PRESSURE_UUID)
        # The Measurement is subscribed only when the records are asked for: a BLS 1.0 cuff starts indicating its
        # memory at once, and ends the connection when it has nothing more (before the clock could be read).

    def new_download(self, since: int | None, *, count_first: bool) -> bps.BpsDownload:
        """The RACP conversation of a BLS 1.1 cuff."""
        return bps.BpsDownload(since, count_first=count_first)

    async def count_records(self, since_sequence: int | None) -> int | None:
        """How many stored records come (a cuff without stored records cannot say: None)."""
        if not self.stored_records:
            return None
        return await super().count_records(since_sequence)

    async def records(self, since_sequence: int | None) -> AsyncIterator[CuffRecord]:
        """The cuff's measurements: stored records after ``since_sequence``, or what it indicates."""
        if self.stored_records:
            async for event in self.report(since_sequence):
                if isinstance(event, bps.StoredMeasurement):
                    if (record := self._record(event.measurement, event.sequence)) is not None:
                        yield record
                elif isinstance(event, bps.RecordDropped):
                    self.note_malformed("blood pressure record", event.reason)
            return
        async for record in self._indicated():
            yield record

    async def _indicated(self) -> AsyncIterator[CuffRecord]:
        """BLS 1.0: the measurements the cuff indicates, until it ends the connection or goes quiet."""
        self._yielded = 0
        await self.link.subscribe(bps.BLOOD_PRESSURE_MEASUREMENT_UUID)
        while True:
            try:
                item = await asyncio.wait_for(self.link.notifications.get(), self.ble.cuff_quiet_s)
            except TimeoutError:
                _logger.info("cuff %s quiet for %.0f s: transfer complete", self.device_id, self.ble.cuff_quiet_s)
                break
            if item is None:  # BLS 1.0 cuffs end the connection once they have sent what they had
                _logger.info("cuff %s ended the connection after %d measurements", self.device_id, self._yielded)
                break
            if item.uuid == bps.INTERMEDIATE_CUFF_PRESSURE_UUID:
                self.intermediate += 1
                continue
            if item.uuid != bps.BLOOD_PRESSURE_MEASUREMENT_UUID:
                continue
            try:
                measurement = bps.parse_measurement(item.data)
            except ProtocolError as exc:
                self.note_malformed("blood pressure measurement", str(exc))
                continue
            if (record := self._record(measurement, None)) is not None:
                yield record
        self.raise_if_malformed()

    def _record(self, measurement: bps.BloodPressureMeasurement, sequence: int | None) -> CuffRecord | None:
        record = to_cuff_record(measurement, sequence)
        if record is None:
            self.skipped_no_value += 1
            _logger.warning("cuff %s: measurement %s has no systolic/diastolic value; skipped", self.device_id,
                            sequence if sequence is not None else "(unnumbered)")  # fmt: skip
            return None
        self._yielded += 1
        return record


async def open_driver(address: str, config: GatewayConfig) -> BpsDriver:
    """Connect to the cuff at ``address`` on ``config.meters.ble.adapter``; ready for a DownloadSession."""
    driver = BpsDriver(address, config.meters.ble)
    await driver.connect()
    return driver


__all__ = ["FAMILY", "BpsDriver", "open_driver", "to_cuff_record"]
