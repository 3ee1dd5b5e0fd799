"""LifeScan OneTouch Ultra 2 driver (9600 8N1, ASCII commands; codec: ``codec/lifescan_ascii``).

Supports serial number, firmware, display unit, clock read/set and the record dump with meal, comment,
control-solution and parity-error marks. Every line carries its own checksum, so a damaged line costs
only that record: the dump is read to the end, then ``DMP`` is repeated (up to ``retries`` times) and
only the records still missing are taken from the repeat. Records have no numbers (``sequence=None``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime

from gateway.errors import DeviceTimeout, ProtocolError, RecordError
from gateway.meters.codec import lifescan_ascii as codec
from gateway.meters.drivers.base import FLAG_DISPLAYS_MMOL_L, LABELLED_SAMPLE_TYPE, SerialDriver, Timeouts
from gateway.meters.transport.serial import LineSettings, SerialPort
from gateway.records import MeterInfo, MeterRecord, Unit

_logger = logging.getLogger(__name__)


class OneTouchUltra2(SerialDriver):
    """OneTouch Ultra 2."""

    family = "onetouch_ultra2"
    model = "OneTouch Ultra 2"
    line = LineSettings(baudrate=9600)

    def __init__(self, port: SerialPort, timeouts: Timeouts) -> None:
        super().__init__(port, timeouts)
        self._decoder = codec.LineDecoder()
        self._unit = Unit.MG_DL
        self._header: codec.DumpHeader | None = None
        self._damage: ProtocolError | DeviceTimeout | None = None

    async def _line(self, timeout: float) -> bytes:
        """The next raw line from the meter (DeviceTimeout on silence)."""
        while (line := self._decoder.next_line()) is None:
            self._decoder.receive_data(await self._read(timeout))
        return line

    async def _command(self, command: str, timeout: float | None = None) -> str:
        """Send ``command`` and return the checked body of its one-line answer, retrying as needed."""
        timeout = timeout or self.timeouts.response_s
        last: ProtocolError | DeviceTimeout | None = None
        for attempt in range(self.timeouts.retries + 1):
            if attempt:
                self.retried += 1
                self._log_retry("%s: repeating %s after: %s", self.port.path, command[:3], last)
                await self._drain()
            self._decoder.clear()
            self.port.discard_input()
            await self.port.write(codec.encode_command(command))
            try:
                return codec.decode_line(await self._line(timeout))
            except (ProtocolError, DeviceTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def _identify(self, *, probe: bool) -> MeterInfo:
        timeout = self.timeouts.probe_s if probe else None
        serial = codec.parse_serial(await self._command(codec.CMD_SERIAL, timeout))
        version = codec.parse_version(await self._command(codec.CMD_VERSION))
        self._unit = codec.parse_unit(await self._command(codec.CMD_UNIT))
        return self._meter_info(serial, version)

    async def read_clock(self) -> datetime | None:
        return codec.parse_clock(await self._command(codec.CMD_CLOCK))

    async def set_clock(self, meter_time: datetime) -> None:
        codec.parse_clock(await self._command(codec.set_clock_command(meter_time)))

    async def _start_dump(self) -> codec.DumpHeader:
        header = codec.parse_header(await self._command(codec.CMD_DUMP))
        info = await self.read_info()
        if header.serial != info.serial:
            raise RecordError(f"dump header names meter {header.serial}, not {info.serial}")
        return header

    async def count_records(self, since_sequence: int | None) -> int | None:
        # The count only comes with the dump: start it here, records() reads on from the header.
        self._header = await self._start_dump()
        return self._header.count

    def _to_record(self, rec: codec.DumpRecord) -> MeterRecord:
        flags: list[str] = []
        if rec.parity_error:
            flags.append(codec.FLAG_PARITY_ERROR)
        if rec.comment:
            flags.append(f"comment:{rec.comment}")
        if self._unit is Unit.MMOL_L:
            flags.append(FLAG_DISPLAYS_MMOL_L)
        return MeterRecord(
            sequence=None,
            meter_time=rec.meter_time,
            value=float(rec.value_mg_dl),
            unit=Unit.MG_DL,
            sample_type=LABELLED_SAMPLE_TYPE,
            meal=rec.meal,
            control_solution=rec.control_solution,
            flags=tuple(flags),
        )

    async def _dump_pass(self, count: int, taken: Counter[codec.DumpRecord]) -> AsyncIterator[codec.DumpRecord]:
        """Read one dump's lines; yield records not yet taken; remember the last damage in ``self._damage``."""
        seen: Counter[codec.DumpRecord] = Counter()
        valid = 0
        while valid < count:
            try:
                raw = await self._line(self.timeouts.response_s)
            except DeviceTimeout as exc:
                self._damage = self._damage or exc
                return
            try:
                rec = codec.parse_record(codec.decode_line(raw))
            except ProtocolError as exc:
                _logger.warning("%s: damaged dump line skipped: %s", self.port.path, exc)
                self._damage = exc
                continue
            valid += 1
            seen[rec] += 1
            if seen[rec] > taken[rec]:
                taken[rec] += 1
                yield rec

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        header = self._header or await self._start_dump()
        self._header = None
        taken: Counter[codec.DumpRecord] = Counter()
        for attempt in range(self.timeouts.retries + 1):
            if attempt:
                self.retried += 1
                _logger.warning(
                    "%s: repeating the dump for %d missing records after: %s",
                    self.port.path,
                    header.count - taken.total(),
                    self._damage,
                )
                again = await self._start_dump()
                if again.count != header.count:
                    raise RecordError(f"record count changed during download ({header.count} -> {again.count})")
            self._damage = None
            async for rec in self._dump_pass(header.count, taken):
                yield self._to_record(rec)
            if taken.total() >= header.count:
                return
        assert self._damage is not None
        raise self._damage
