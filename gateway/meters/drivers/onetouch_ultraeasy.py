"""LifeScan OneTouch UltraEasy / Ultra Mini driver (9600 8N1, binary frames; codec: ``codec/lifescan_binary``).

Supports serial number, firmware, display unit, clock read/set, record count and records (newest first).
Retries follow the link layer: a request that is not acknowledged, or whose answer does not arrive, is
retransmitted unchanged (same sequence bit) up to ``retries`` times; a damaged frame from the meter is
dropped and the meter's own retransmission (or ours) brings it again. Records have no stable numbers
(index 0 is always the newest), so ``sequence=None``; the download session stops once it reaches the newest
record of the previous complete download (``newest_first``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime

from gateway.errors import DeviceTimeout, FrameError
from gateway.meters.codec import lifescan_binary as codec
from gateway.meters.drivers.base import FLAG_DISPLAYS_MMOL_L, SerialDriver, Timeouts
from gateway.meters.transport.serial import LineSettings, SerialPort
from gateway.records import MeterInfo, MeterRecord, Unit

_logger = logging.getLogger(__name__)


class OneTouchUltraEasy(SerialDriver):
    """OneTouch UltraEasy / Ultra Mini."""

    family = "onetouch_ultraeasy"
    model = "OneTouch UltraEasy"
    line = LineSettings(baudrate=9600)
    newest_first = True  # index 0 is the newest, one request per record: a later visit stops early

    def __init__(self, port: SerialPort, timeouts: Timeouts) -> None:
        super().__init__(port, timeouts)
        self._decoder = codec.FrameDecoder()
        self._link = codec.Link()
        self._unit = Unit.MG_DL
        self._open = False
        self._last_damage: FrameError | None = None
        self._count: int | None = None

    async def _next_frame(self, timeout: float) -> codec.Frame:
        """The next intact frame; damaged ones are logged and skipped (the sender repeats them)."""
        while True:
            try:
                frame = self._decoder.next_frame()
            except FrameError as exc:
                _logger.warning("%s: damaged frame dropped: %s", self.port.path, exc)
                # Report the first damage of the request: resynchronising inside a bad frame can raise
                # follow-on errors (a 0x02 data byte read as STX) that would hide the real cause (its CRC).
                self._last_damage = self._last_damage or exc
                continue
            if frame is not None:
                return frame
            self._decoder.receive_data(await self._read(timeout))

    async def _send(self, first: bytes, *, want_response: bool, timeout: float | None = None) -> bytes:
        """Write a frame; wait for its acknowledgement and (``want_response``) the answer; retransmit on silence."""
        timeout = timeout or self.timeouts.response_s
        self._last_damage = None
        frame_bytes = first
        for attempt in range(self.timeouts.retries + 1):
            if attempt:
                self.retried += 1
                frame_bytes = self._link.retransmit()
                self._log_retry("%s: retransmitting request (attempt %d)", self.port.path, attempt + 1)
            await self.port.write(frame_bytes)
            try:
                while True:
                    event = self._link.receive_frame(await self._next_frame(timeout))
                    if isinstance(event, codec.Acknowledged):
                        if not want_response:
                            return b""
                    elif isinstance(event, codec.Duplicate):
                        await self.port.write(event.ack)
                    else:
                        await self.port.write(event.ack)
                        return event.message
            except DeviceTimeout:
                continue
        if self._last_damage is not None:
            raise self._last_damage
        raise DeviceTimeout(f"{self.port.path}: UltraEasy did not answer after {self.timeouts.retries} retries")

    async def _request(self, message: bytes) -> bytes:
        return await self._send(self._link.request(message), want_response=True)

    async def _identify(self, *, probe: bool) -> MeterInfo:
        timeout = self.timeouts.probe_s if probe else None
        await self._send(self._link.open(), want_response=False, timeout=timeout)
        self._open = True
        serial = codec.parse_serial(await self._request(codec.REQ_SERIAL))
        version = codec.parse_version(await self._request(codec.REQ_VERSION))
        self._unit = codec.parse_unit(await self._request(codec.REQ_UNIT))
        return self._meter_info(serial, version)

    async def read_clock(self) -> datetime | None:
        return codec.parse_clock(await self._request(codec.clock_read_request()))

    async def set_clock(self, meter_time: datetime) -> None:
        codec.parse_clock(await self._request(codec.clock_write_request(meter_time)))

    async def count_records(self, since_sequence: int | None) -> int | None:
        self._count = codec.parse_record_count(await self._request(codec.record_request(codec.RECORD_COUNT_INDEX)))
        return self._count

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        # The count the session just asked for is still right: a meter in PC mode takes no readings.
        count = self._count if self._count is not None else await self.count_records(since_sequence) or 0
        self._count = None
        flags = (FLAG_DISPLAYS_MMOL_L,) if self._unit is Unit.MMOL_L else ()
        for index in range(count):
            meter_time, value = codec.parse_record(await self._request(codec.record_request(index)))
            yield MeterRecord(sequence=None, meter_time=meter_time, value=float(value), unit=Unit.MG_DL, flags=flags)

    async def _goodbye(self) -> None:
        if self._open:
            self._open = False
            await self._send(self._link.close(), want_response=False, timeout=min(self.timeouts.response_s, 0.5))
