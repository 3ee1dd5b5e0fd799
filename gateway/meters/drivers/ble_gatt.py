"""What the Bluetooth LE health-device drivers share: link, identity, clock, and the RACP download loop.

:class:`BleGattDriver` is the base of the Glucose Service driver (:mod:`gateway.meters.drivers.gls`) and the
Blood Pressure Service driver (:mod:`gateway.meters.drivers.bps`): a :class:`~gateway.meters.transport.ble.BleLink`
(connect with the transport's retries and pairing), identity from Device Information (model 0x2A24, serial
0x2A25, firmware 0x2A26; ``meter_id`` is ``<family>:<serial>``, or ``<family>:<address>`` without a serial), the
device's clock from Current Time 0x2A2B when it has one, and the Record Access Control Point conversation of
the pure codec (:class:`~gateway.meters.codec.gls.RacpDownload` and its subclasses): count, report, abort on
close, a link lost mid-transfer (DeviceDisconnected after handing over what arrived), a silent device
(DeviceTimeout), malformed frames (skipped, counted, reported as a RecordError at the end so the session keeps
every good record and records the problem).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import ClassVar, Generic, Protocol, TypeVar

from gateway.config import BleSection
from gateway.errors import DeviceDisconnected, DeviceError, DeviceTimeout, ProtocolError, RecordError
from gateway.meters.codec import gls
from gateway.meters.transport.ble import BleLink
from gateway.records import Measures, MeterInfo

_logger = logging.getLogger(__name__)

TRANSPORT = "ble"
E_co = TypeVar("E_co", covariant=True)


class Conversation(Protocol[E_co]):
    """A RACP download as the driver drives it (:class:`~gateway.meters.codec.gls.GlsDownload`,
    :class:`~gateway.meters.codec.bps.BpsDownload`)."""

    since: int | None
    state: gls.DownloadState

    @property
    def finished(self) -> bool: ...

    def start(self) -> list[bytes]: ...

    def report(self) -> list[bytes]: ...

    def abort(self) -> list[bytes]: ...

    def receive(self, char_uuid: str, data: bytes) -> Sequence[E_co]: ...

    def connection_lost(self) -> Sequence[E_co]: ...


E = TypeVar("E")


class BleGattDriver(Generic[E]):
    """A connected Bluetooth LE health device (a MeterDriver once a subclass adds ``records``)."""

    family: ClassVar[str]
    measures: ClassVar[Measures]
    newest_first = False  # RACP filters on the sequence number instead

    def __init__(self, address: str, ble: BleSection, *, link: BleLink | None = None) -> None:
        self.address = address
        self.ble = ble
        self.link = link or BleLink(address, ble)
        self.link.device_id = f"{self.family}:{address}"
        self.malformed: list[str] = []
        self.skipped_no_value = 0
        self._yielded = 0
        self._download: Conversation[E] | None = None
        self._info: MeterInfo | None = None
        self._has_current_time = False

    @property
    def device_id(self) -> str:
        """The device id once known (``<family>:<address>`` before), as errors and logs name it."""
        return self.link.device_id

    @property
    def paired(self) -> bool:
        """True when the device demanded pairing and the gateway paired with it."""
        return self.link.paired

    async def connect(self) -> None:
        """Connect (with the transport's retries and pairing) and set the device up."""
        await self.link.connect(self.setup)

    async def setup(self, link: BleLink) -> None:
        """First reads and subscriptions on a fresh connection (may raise PairingRequired)."""
        raise NotImplementedError

    def new_download(self, since: int | None, *, count_first: bool) -> Conversation[E]:
        """A RACP conversation of this service."""
        raise NotImplementedError

    async def read_identity(self, link: BleLink) -> None:
        """Read Device Information (and note whether there is a Current Time) into :meth:`read_info`'s answer."""
        self._has_current_time = link.has_characteristic(gls.CURRENT_TIME_UUID)
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
        self._info = MeterInfo(
            meter_id=f"{self.family}:{serial or self.address}",
            family=self.family,
            transport=TRANSPORT,
            serial=serial or self.address,
            model=strings["model"],
            firmware=strings["firmware"],
            address=self.address,
            measures=self.measures,
        )

    # -- MeterDriver ------------------------------------------------------------------------------------------
    async def read_info(self) -> MeterInfo:
        """Identity from Device Information (read at connect)."""
        if self._info is None:
            raise DeviceError(f"{self.address}: not connected", device_id=self.device_id)
        self.link.device_id = self._info.meter_id
        return self._info

    async def read_clock(self) -> datetime | None:
        """The device's Current Time, or None when it has no Current Time Service."""
        if not self._has_current_time:
            return None
        return gls.parse_current_time(await self.link.read(gls.CURRENT_TIME_UUID, self.ble.racp_timeout_s)).time

    async def set_clock(self, meter_time: datetime) -> None:
        """Not supported: the devices' Current Time is read-only on the ones we know; the offset is recorded."""
        _logger.info("device %s: setting the clock over BLE is not supported", self.device_id)

    async def close(self) -> None:
        """Abort a running report (best effort), then disconnect."""
        download = self._download
        if download is not None and self.link.is_connected and not download.finished:
            for data in download.abort():
                with contextlib.suppress(DeviceError, ProtocolError):
                    await self._write_racp(data)
        await self.link.disconnect()

    # -- the RACP conversation ----------------------------------------------------------------------------------
    async def count_records(self, since_sequence: int | None) -> int | None:
        """Records with sequence > ``since_sequence`` (all when None), from RACP "report number"."""
        self._download = self.new_download(since_sequence, count_first=True)
        for data in self._download.start():
            await self._write_racp(data)
        async for event in self._events(self.ble.racp_timeout_s):
            if isinstance(event, gls.RecordCount):
                return event.count  # with 0 the download is already finished ("no records")
            if isinstance(event, gls.NoRecords):
                return 0
            if isinstance(event, gls.RacpFailed):
                # Some devices do not implement "report number": report without knowing N.
                _logger.info("device %s does not count records (%s)", self.device_id, gls.code_name(event.code))
                self._download = None
                return None
        return None

    async def report(self, since_sequence: int | None) -> AsyncIterator[E]:
        """Report the records after ``since_sequence``: the service's record events, until the report ends.

        Raises DeviceError when the device refuses the report, RecordError at the end when frames were skipped."""
        download = self._download
        if download is not None and download.since == since_sequence and download.finished:
            return  # the count said "no records"
        if download is not None and download.since == since_sequence and download.state is gls.DownloadState.COUNTED:
            writes = download.report()
        else:
            self._download = self.new_download(since_sequence, count_first=False)
            writes = self._download.start()
        for data in writes:
            await self._write_racp(data)
        self._yielded = 0
        async for event in self._events(self.ble.record_timeout_s):
            if isinstance(event, gls.RacpFailed):
                raise DeviceError(
                    f"{self.device_id} refused the report: {gls.code_name(event.code)}", device_id=self.device_id
                )
            if isinstance(event, gls.Complete | gls.NoRecords):
                break
            if not isinstance(event, gls.RecordCount | gls.Aborted):
                yield event
        self.raise_if_malformed()

    def raise_if_malformed(self) -> None:
        """At the end of a download: a RecordError naming the first frame skipped, if any was."""
        if self.malformed:
            raise RecordError(
                f"{self.device_id}: {len(self.malformed)} malformed frame(s) skipped, first: {self.malformed[0]}"
            )

    def note_malformed(self, what: str, reason: str) -> None:
        """A frame skipped (counted, reported at the end of the download)."""
        self.malformed.append(reason)
        _logger.warning("device %s: malformed %s skipped: %s", self.device_id, what, reason)

    def link_lost(self) -> DeviceDisconnected:
        """The error of a link lost mid-transfer: what was handed over is kept."""
        kept = self._yielded
        return DeviceDisconnected(
            f"{self.device_id}: link lost after {kept} records", device_id=self.device_id, records_kept=kept
        )

    async def _write_racp(self, data: bytes) -> None:
        await self.link.write(gls.RACP_UUID, data, self.ble.racp_timeout_s)

    async def _events(self, timeout_s: float) -> AsyncIterator[E | gls.RacpEvent]:
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
                raise self.link_lost()
            try:
                events = self._download.receive(item.uuid, item.data)
            except ProtocolError as exc:
                if item.uuid == gls.RACP_UUID:
                    raise  # the conversation itself is broken: give up (the session keeps what arrived)
                self.note_malformed(f"{item.uuid[4:8]} frame", str(exc))
                continue
            for event in events:
                yield event
