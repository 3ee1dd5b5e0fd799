"""TaiDoc TD-42xx driver (FORA and OEM meters; 19200 8N1, fixed 8-byte frames; codec: ``codec/taidoc``).

Expected port: the meter's CP2110 USB-HID UART bridge as a pyserial URL, ``cp2110:///dev/hidrawN`` (needs
the ``hidapi`` package; discovery finds the bridge by its USB ids 10c4:ea80), or any serial path (the
emulator's pty).

Supports model (``TD-4277``...), serial number (two halves), clock read/set (whole minutes), record count
and records newest first, each with its meal mark (before / after meal) and control-solution flag, carried
in :class:`~gateway.records.MeterRecord` like the other families. Results of other analytes on
multi-parameter meters (ketone, hematocrit...) are skipped: they are not glucose. HI (above 600 mg/dL) is
kept at 600 and flagged, LO (below 20) kept as sent and flagged. The protocol does not report the display
unit.

Every answer is checked: start byte, the meter's direction byte (0xA5), checksum, and that it answers the
command sent. A damaged answer, silence, or the meter's "entering communication mode" notice (0x54, sent
instead of the first answer) make the driver send the same command again, up to ``retries`` times; an answer
to an earlier command (late, after a repeat) is skipped. Every command is an idempotent read (the clock set
sets the same time again), so a repeat never loses or doubles a record. Records have no stable numbers
(index 0 is always the newest), so ``sequence=None`` and the session stops at the previous complete
download's newest record (``newest_first``): a later visit reads only what is new.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import datetime

from gateway.errors import DeviceTimeout, ProtocolError, RecordError
from gateway.meters.codec import taidoc as codec
from gateway.meters.drivers.base import FLAG_ABOVE_RANGE, FLAG_BELOW_RANGE, LABELLED_SAMPLE_TYPE, SerialDriver, Timeouts
from gateway.meters.transport.serial import LineSettings, SerialPort
from gateway.records import MeterInfo, MeterRecord, Unit

_logger = logging.getLogger(__name__)


class TaiDocTD42xx(SerialDriver):
    """TaiDoc TD-4277 / TD-4235B and the meters sold under other names with the same protocol."""

    family = "taidoc_td42xx"
    model = "TaiDoc TD-42xx"
    line = LineSettings(baudrate=19200)
    newest_first = True  # index 0 is the newest, two requests per record: a later visit stops early

    def __init__(self, port: SerialPort, timeouts: Timeouts) -> None:
        super().__init__(port, timeouts)
        self._decoder = codec.FrameDecoder()
        self._count: int | None = None

    async def _answer(self, command: int, timeout: float) -> codec.Frame:
        """Read frames until the meter's answer to ``command`` (DeviceTimeout on silence)."""
        while True:
            while (frame := self._decoder.next_frame()) is None:
                self._decoder.receive_data(await self._read(timeout))
            if not frame.from_meter:
                continue  # our own frame echoed back (a cable or bridge that loops back): not an answer
            if frame.command == command or (
                command == codec.Command.CONNECT and frame.command in codec.CONNECT_ANSWERS
            ):
                return frame
            if frame.command == codec.Command.COMM_MODE:
                raise DeviceTimeout(
                    f"{self.port.path}: the meter entered communication mode and ignored 0x{command:02x}"
                )
            _logger.debug(
                "%s: skipped an answer to 0x%02x while waiting for 0x%02x", self.port.path, frame.command, command
            )

    async def _command(
        self, command: int, payload: bytes = codec.EMPTY, *, timeout: float | None = None
    ) -> codec.Frame:
        """Send ``command`` and return the meter's checked answer, repeating it as the protocol allows."""
        timeout = timeout or self.timeouts.response_s
        request = codec.encode_frame(command, payload)
        last: ProtocolError | DeviceTimeout | None = None
        for attempt in range(self.timeouts.retries + 1):
            if attempt:
                self.retried += 1
                self._log_retry("%s: repeating 0x%02x after: %s", self.port.path, command, last)
                await self._drain()
            self._decoder.clear()
            self.port.discard_input()
            await self.port.write(request)
            try:
                return await self._answer(command, timeout)
            except (ProtocolError, DeviceTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def _identify(self, *, probe: bool) -> MeterInfo:
        await self._command(codec.Command.CONNECT, timeout=self.timeouts.probe_s if probe else None)
        model = codec.parse_model(await self._command(codec.Command.READ_MODEL))
        low = await self._command(codec.Command.SERIAL_LOW)
        high = await self._command(codec.Command.SERIAL_HIGH)
        info = self._meter_info(codec.parse_serial(low, high), None)
        return dataclasses.replace(info, model=f"TaiDoc {model}")

    async def read_clock(self) -> datetime | None:
        return codec.decode_date((await self._command(codec.Command.READ_CLOCK)).payload)

    async def set_clock(self, meter_time: datetime) -> None:
        wanted = meter_time.replace(second=0, microsecond=0)
        echoed = codec.decode_date((await self._command(codec.Command.WRITE_CLOCK, codec.encode_date(wanted))).payload)
        if echoed != wanted:
            raise RecordError(f"the meter set its clock to {echoed.isoformat()}, not {wanted.isoformat()}")

    async def count_records(self, since_sequence: int | None) -> int | None:
        self._count = codec.parse_count(await self._command(codec.Command.RECORD_COUNT))
        return self._count

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        # The count the session just asked for is still right: a meter talking to us takes no readings.
        count = self._count if self._count is not None else await self.count_records(since_sequence) or 0
        self._count = None
        for index in range(count):
            when = codec.decode_date(
                (await self._command(codec.Command.RECORD_TIME, codec.index_payload(index))).payload
            )
            result = codec.parse_value(await self._command(codec.Command.RECORD_VALUE, codec.index_payload(index)))
            if result.parameter != codec.PARAMETER_GLUCOSE:
                name = codec.PARAMETER_NAMES.get(result.parameter, f"parameter {result.parameter}")
                _logger.debug("%s: record %d is a %s result, not glucose: skipped", self.port.path, index, name)
                continue
            yield _to_record(when, result)


def _to_record(when: datetime, result: codec.RecordValue) -> MeterRecord:
    value, flags = result.value_mg_dl, []
    if value > codec.HI_ABOVE_MG_DL:
        value = codec.HI_ABOVE_MG_DL
        flags.append(FLAG_ABOVE_RANGE)
    elif value < codec.LO_BELOW_MG_DL:
        flags.append(FLAG_BELOW_RANGE)
    return MeterRecord(
        sequence=None,
        meter_time=when,
        value=float(value),
        unit=Unit.MG_DL,
        sample_type=LABELLED_SAMPLE_TYPE,
        meal=result.meal,
        control_solution=result.control_solution,
        flags=tuple(flags),
    )
