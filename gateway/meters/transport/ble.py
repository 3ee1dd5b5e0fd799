"""Bluetooth LE glucose meters (Glucose Service 0x1808) through bleak: the only module that imports bleak.

ADAPTER: moves bytes between bleak and the pure codec (:mod:`gateway.meters.codec.gls`), and translates
bleak's exceptions into :mod:`gateway.errors` in one place (:func:`_bleak_errors`).

Supports:

- :func:`scan`: meters advertising the Glucose Service on the configured adapter.
- :func:`open_driver`: connect (timeouts, retries with backoff), pair/bond when the meter answers "not paired"
  (reconnect with ``pair=True``), subscribe to Glucose Measurement / Context notifications and RACP
  indications, read Device Information (model, serial, firmware) and Current Time when present. The result
  is a :class:`~gateway.meters.MeterDriver` for :class:`~gateway.meters.session.DownloadSession`:
  ``count_records(since)`` asks the meter for the number of records with sequence > since (all on a first
  visit), ``records(since)`` reports them, each paired with its context by sequence number.
- "No records found", abort on close while a report runs, a link lost mid-transfer (DeviceDisconnected after
  yielding what arrived, so the session keeps it and resumes from the last stored sequence next time), a
  silent meter (DeviceTimeout), malformed frames (skipped, counted, reported as a RecordError at the end so
  the session records the problem while keeping every good record).

``meter_id`` is ``gls:<serial>`` (Device Information serial number), or ``gls:<address>`` without one.
The adapter is always named explicitly (``config.meters.ble.adapter``), never left to bleak's default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import BlueZClientArgs, BlueZScannerArgs
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import (
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from gateway.config import BleSection, GatewayConfig
from gateway.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceNotFound,
    DeviceTimeout,
    ProtocolError,
    RecordError,
)
from gateway.meters.codec import gls
from gateway.records import Meal, MeterInfo, MeterRecord, Unit

_logger = logging.getLogger(__name__)

FAMILY = "gls"
TRANSPORT = "ble"

_PAIRING_CODES = {
    BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHENTICATION,
    BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION,
    BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION_KEY_SIZE,
    BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHORIZATION,
}
_MEALS = {
    gls.MealCode.PREPRANDIAL: Meal.BEFORE_MEAL,
    gls.MealCode.POSTPRANDIAL: Meal.AFTER_MEAL,
    gls.MealCode.FASTING: Meal.FASTING,
    gls.MealCode.CASUAL: Meal.CASUAL,
    gls.MealCode.BEDTIME: Meal.BEDTIME,
}
_UNITS = {"mg/dL": Unit.MG_DL, "mmol/L": Unit.MMOL_L}


class PairingRequired(DeviceError):
    """The meter refused a read or write until the gateway pairs (BlueZ "Not paired", ATT 0x05/0x0F)."""


@dataclass(frozen=True, slots=True)
class FoundMeter:
    """A meter seen advertising the Glucose Service."""

    address: str
    name: str | None
    rssi: int | None
    transport: str = TRANSPORT
    family: str = FAMILY


def _needs_pairing(exc: BaseException) -> bool:
    if isinstance(exc, BleakGATTProtocolError):
        return exc.code in _PAIRING_CODES
    if isinstance(exc, BleakDBusError):
        details = (exc.dbus_error_details or "").lower()
        return exc.dbus_error.endswith((".NotPaired", ".AuthenticationFailed")) or (
            exc.dbus_error.endswith(".NotPermitted") and "paired" in details
        )
    return False


@contextlib.contextmanager
def _bleak_errors(what: str, device_id: str | None) -> Iterator[None]:
    """The one translation point: bleak / D-Bus / timeout exceptions -> gateway.errors, ``from`` the original."""
    try:
        yield
    except (DeviceError, ProtocolError):
        raise
    except BleakDeviceNotFoundError as exc:
        raise DeviceNotFound(f"{what}: no meter at {exc.identifier} (not advertising?)", device_id=device_id) from exc
    except TimeoutError as exc:
        raise DeviceTimeout(f"{what}: timed out", device_id=device_id) from exc
    except BleakError as exc:
        if _needs_pairing(exc):
            raise PairingRequired(f"{what}: the meter requires pairing ({exc})", device_id=device_id) from exc
        text = str(exc).lower()
        if "not connected" in text or "disconnected" in text:
            raise DeviceDisconnected(f"{what}: link lost ({exc})", device_id=device_id) from exc
        raise DeviceError(f"{what}: {exc}", device_id=device_id) from exc
    except (EOFError, ConnectionError, OSError) as exc:  # the D-Bus socket itself went away
        raise DeviceError(f"{what}: Bluetooth service unavailable ({exc})", device_id=device_id) from exc


def _scanner_args(ble: BleSection) -> BlueZScannerArgs:
    return {"adapter": ble.adapter}


def _client_args(ble: BleSection) -> BlueZClientArgs:
    return {"adapter": ble.adapter}


async def scan(config: GatewayConfig, timeout: float | None = None) -> list[FoundMeter]:
    """Meters advertising the Glucose Service on ``config.meters.ble.adapter``, strongest signal first."""
    ble = config.meters.ble
    with _bleak_errors(f"scanning on {ble.adapter}", None):
        found = await BleakScanner.discover(
            timeout=timeout or ble.scan_timeout_s,
            return_adv=True,
            service_uuids=[gls.GLUCOSE_SERVICE_UUID],
            bluez=_scanner_args(ble),
        )
    meters = [
        FoundMeter(address=device.address, name=adv.local_name or device.name, rssi=adv.rssi)
        for device, adv in found.values()
        if gls.GLUCOSE_SERVICE_UUID in [u.lower() for u in adv.service_uuids]
    ]
    return sorted(meters, key=lambda m: (-(m.rssi if m.rssi is not None else -999), m.address))


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


class BleGlsDriver:
    """A connected GLS meter (MeterDriver). Build it with :func:`open_driver`."""

    newest_first = False  # RACP filters on the sequence number instead

    def __init__(self, address: str, ble: BleSection) -> None:
        self.address = address
        self.ble = ble
        self.device_id = f"{FAMILY}:{address}"
        self.paired = False
        self.malformed: list[str] = []
        self.skipped_no_value = 0
        self._client: BleakClient | None = None
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()  # None: link lost
        self._yielded = 0
        self._download: gls.GlsDownload | None = None
        self._info: MeterInfo | None = None
        self._has_current_time = False

    # -- connection -----------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect with retries; pair (reconnect with ``pair=True``) when the meter demands it."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.ble.connect_retries + 1),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type((DeviceTimeout, DeviceNotFound, DeviceDisconnected)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    await self._connect_once()
                except PairingRequired:
                    await self._connect_once()  # now with pair=True; a second refusal is a plain DeviceError

    async def _connect_once(self) -> None:
        self._queue = asyncio.Queue()  # nothing from an earlier attempt's link may leak into this one
        client = BleakClient(
            self.address,
            disconnected_callback=self._on_disconnect,
            timeout=self.ble.connect_timeout_s,
            pair=self.paired,
            bluez=_client_args(self.ble),
        )
        with _bleak_errors(f"connecting to {self.address}", self.device_id):
            await client.connect()
        self._client = client
        try:
            await self._setup(client)
        except PairingRequired:
            await self._disconnect_quietly()
            if self.paired:
                raise DeviceError(f"{self.address}: still refused after pairing", device_id=self.device_id) from None
            _logger.info("meter %s requires pairing; reconnecting with pairing", self.address)
            self.paired = True
            raise
        except BaseException:
            await self._disconnect_quietly()
            raise

    async def _setup(self, client: BleakClient) -> None:
        with _bleak_errors(f"setting up {self.address}", self.device_id):
            if client.services.get_service(gls.GLUCOSE_SERVICE_UUID) is None:
                raise DeviceError(f"{self.address} has no Glucose Service", device_id=self.device_id)
            # The feature read is the first access to the Glucose Service: a meter that wants a bond says so here.
            gls.parse_feature(await self._read(client, gls.GLUCOSE_FEATURE_UUID))
            self._has_current_time = client.services.get_characteristic(gls.CURRENT_TIME_UUID) is not None
            self._info = await self._read_info(client)
            for uuid in (gls.GLUCOSE_MEASUREMENT_UUID, gls.GLUCOSE_CONTEXT_UUID, gls.RACP_UUID):
                await client.start_notify(uuid, self._on_notify)

    async def _read_info(self, client: BleakClient) -> MeterInfo:
        strings: dict[str, str | None] = {}
        for key, uuid in (
            ("model", gls.MODEL_NUMBER_UUID),
            ("serial", gls.SERIAL_NUMBER_UUID),
            ("firmware", gls.FIRMWARE_REVISION_UUID),
        ):
            if client.services.get_characteristic(uuid) is None:
                strings[key] = None
                continue
            strings[key] = gls.parse_dis_string(await self._read(client, uuid), key) or None
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

    def _on_disconnect(self, client: BleakClient) -> None:
        if client is not self._client:
            return  # an earlier attempt's link, or our own close
        _logger.warning("meter %s: link lost", self.device_id)
        self._queue.put_nowait(None)

    def _on_notify(self, characteristic: BleakGATTCharacteristic, data: bytearray) -> None:
        self._queue.put_nowait((characteristic.uuid.lower(), bytes(data)))

    async def _disconnect_quietly(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(BleakError, TimeoutError, EOFError, OSError):
            await asyncio.wait_for(client.disconnect(), self.ble.connect_timeout_s)

    # -- MeterDriver --------------------------------------------------------------------------------------------
    async def read_info(self) -> MeterInfo:
        """Identity from Device Information (read at connect)."""
        if self._info is None:
            raise DeviceError(f"{self.address}: not connected", device_id=self.device_id)
        self.device_id = self._info.meter_id
        return self._info

    async def read_clock(self) -> datetime | None:
        """The meter's Current Time, or None when it has no Current Time Service."""
        client = self._require_client()
        if not self._has_current_time:
            return None
        with _bleak_errors(f"reading the clock of {self.device_id}", self.device_id):
            return gls.parse_current_time(await self._read(client, gls.CURRENT_TIME_UUID)).time

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
        download, client = self._download, self._client
        if download is not None and client is not None and client.is_connected and not download.finished:
            for data in download.abort():
                with contextlib.suppress(DeviceError, ProtocolError):
                    await self._write_racp(data)
        await self._disconnect_quietly()

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _require_client(self) -> BleakClient:
        if self._client is None or not self._client.is_connected:
            raise DeviceDisconnected(f"{self.device_id}: not connected", device_id=self.device_id)
        return self._client

    async def _read(self, client: BleakClient, uuid: str) -> bytes:
        return bytes(await asyncio.wait_for(client.read_gatt_char(uuid), self.ble.racp_timeout_s))

    async def _write_racp(self, data: bytes) -> None:
        client = self._require_client()
        with _bleak_errors(f"writing RACP to {self.device_id}", self.device_id):
            await asyncio.wait_for(client.write_gatt_char(gls.RACP_UUID, data, response=True), self.ble.racp_timeout_s)

    async def _events(self, timeout_s: float) -> AsyncIterator[gls.Event]:
        """Events from the download as notifications arrive; raises on link loss or silence."""
        assert self._download is not None
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout_s)
            except TimeoutError:
                raise DeviceTimeout(
                    f"{self.device_id}: no answer for {timeout_s:.0f} s ({self._yielded} records received)",
                    device_id=self.device_id,
                ) from None
            if item is None:  # link lost
                for event in self._download.connection_lost():
                    yield event
                kept = self._yielded
                raise DeviceDisconnected(
                    f"{self.device_id}: link lost after {kept} records", device_id=self.device_id, records_kept=kept
                )
            uuid, data = item
            try:
                events = self._download.receive(uuid, data)
            except ProtocolError as exc:
                if uuid == gls.RACP_UUID:
                    raise  # the conversation itself is broken: give up (the session keeps what arrived)
                self.malformed.append(str(exc))
                _logger.warning("meter %s: malformed %s frame skipped: %s", self.device_id, uuid[4:8], exc)
                continue
            for event in events:
                yield event


async def open_driver(address: str, config: GatewayConfig) -> BleGlsDriver:
    """Connect to the GLS meter at ``address`` on ``config.meters.ble.adapter``; ready for a DownloadSession."""
    driver = BleGlsDriver(address, config.meters.ble)
    await driver.connect()
    return driver


__all__ = ["BleGlsDriver", "FoundMeter", "PairingRequired", "open_driver", "scan", "to_meter_record"]
