"""LifeScan OneTouch UltraEasy / Ultra Mini driver (9600 8N1, binary frames; codec: ``codec/lifescan_binary``).

Supports serial number, firmware, display unit, clock read/set, record count and records (newest first).
The link layer is checked as a real host must (see the codec): every frame from the meter must carry the
sequence and expect-receive bits that fit the exchange. Retries follow the link layer's rules:

- a request that is not acknowledged, or whose answer does not arrive, is retransmitted unchanged (same
  bits) up to ``retries`` times; a damaged frame from the meter is dropped and the meter's own
  retransmission (or ours) brings it again; a repeated answer is acknowledged again and ignored;
- when the meter's bits show the two sides out of step (:class:`~gateway.errors.LinkControlError`: an
  acknowledgement that does not take our request, a sequence bit we do not expect, a disconnect from the
  meter), the link is re-opened and the request asked again with fresh bits, within the same ``retries``;
  after that the error is raised, naming the bit and its values.

Every request is an idempotent read (or the clock set, which sets the same time again), and a record is
yielded only once its answer arrived and was acknowledged, so recovering never loses or repeats a record.
Records have no stable numbers (index 0 is always the newest), so ``sequence=None``; the download session
stops once it reaches the newest record of the previous complete download (``newest_first``). A reading
above the meter's range (HI, value 0xFFFF on the wire) is kept at :data:`HI_VALUE_MG_DL` and flagged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime

from gateway.errors import DeviceTimeout, FrameError, LinkControlError
from gateway.meters.codec import lifescan_binary as codec
from gateway.meters.drivers.base import (
    FLAG_ABOVE_RANGE,
    FLAG_DISPLAYS_MMOL_L,
    LABELLED_SAMPLE_TYPE,
    SerialDriver,
    Timeouts,
)
from gateway.meters.transport.serial import LineSettings, SerialPort
from gateway.records import MeterInfo, MeterRecord, Unit

_logger = logging.getLogger(__name__)

HI_VALUE_MG_DL = 600
"""The UltraEasy's upper limit: a HI reading is kept at this value and flagged :data:`FLAG_ABOVE_RANGE`."""


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
        self.resyncs = 0
        """Times the link was re-opened because the meter's bits were out of step (for tests and logs)."""

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

    async def _await_answer(self, *, want_response: bool, timeout: float) -> bytes:
        """Read frames until our frame is acknowledged (and, with ``want_response``, answered)."""
        while True:
            event = self._link.receive_frame(await self._next_frame(timeout))
            if isinstance(event, codec.Acknowledged):
                if not want_response:
                    return b""
            elif isinstance(event, codec.Duplicate):
                await self.port.write(event.ack)
            elif isinstance(event, codec.Response):
                await self.port.write(event.ack)
                return event.message

    async def _exchange(self, message: bytes | None, *, timeout: float | None = None) -> bytes:
        """Send a request (``message``) or re-open the link (``None``) and return the meter's answer.

        Silence or damage: retransmit the same frame. Bits out of step: re-open the link, ask again.
        """
        timeout = timeout or self.timeouts.response_s
        self._last_damage = None
        last_problem: LinkControlError | DeviceTimeout | None = None
        frame_bytes = self._link.open() if message is None else self._link.request(message)
        for attempt in range(self.timeouts.retries + 1):
            if attempt:
                self.retried += 1
                if isinstance(last_problem, LinkControlError) and message is not None:
                    self.resyncs += 1
                    self._log_retry("%s: link out of step (%s); re-opening it", self.port.path, last_problem)
                    await self._reopen(timeout)
                    frame_bytes = self._link.request(message)
                else:
                    frame_bytes = self._link.retransmit()
                    self._log_retry("%s: retransmitting (attempt %d)", self.port.path, attempt + 1)
            await self.port.write(frame_bytes)
            try:
                return await self._await_answer(want_response=message is not None, timeout=timeout)
            except (DeviceTimeout, LinkControlError) as exc:
                last_problem = exc
        if isinstance(last_problem, LinkControlError):
            raise last_problem
        if self._last_damage is not None:
            raise self._last_damage
        raise DeviceTimeout(f"{self.port.path}: UltraEasy did not answer after {self.timeouts.retries} retries")

    async def _reopen(self, timeout: float) -> None:
        """Disconnect frame and its acknowledgement: both sides' bits back to 0 (retransmitted on silence)."""
        frame_bytes = self._link.open()
        for _ in range(self.timeouts.retries + 1):
            await self.port.write(frame_bytes)
            try:
                await self._await_answer(want_response=False, timeout=timeout)
                return
            except DeviceTimeout:
                continue
        raise DeviceTimeout(f"{self.port.path}: UltraEasy did not acknowledge the link reset")

    async def _request(self, message: bytes) -> bytes:
        return await self._exchange(message)

    async def _identify(self, *, probe: bool) -> MeterInfo:
        timeout = self.timeouts.probe_s if probe else None
        await self._exchange(None, timeout=timeout)
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

    def _to_record(self, meter_time: datetime, value: int) -> MeterRecord:
        flags: list[str] = []
        if value == codec.HI_VALUE:
            value = HI_VALUE_MG_DL
            flags.append(FLAG_ABOVE_RANGE)
        if self._unit is Unit.MMOL_L:
            flags.append(FLAG_DISPLAYS_MMOL_L)
        return MeterRecord(
            sequence=None, meter_time=meter_time, value=float(value), unit=Unit.MG_DL,
            sample_type=LABELLED_SAMPLE_TYPE, flags=tuple(flags),
        )  # fmt: skip

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        # The count the session just asked for is still right: a meter in PC mode takes no readings.
        count = self._count if self._count is not None else await self.count_records(since_sequence) or 0
        self._count = None
        for index in range(count):
            yield self._to_record(*codec.parse_record(await self._request(codec.record_request(index))))

    async def _goodbye(self) -> None:
        if self._open:
            self._open = False
            await self._exchange(None, timeout=min(self.timeouts.response_s, 0.5))
