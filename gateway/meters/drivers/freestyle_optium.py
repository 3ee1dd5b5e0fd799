"""Abbott FreeStyle Optium driver (19200 8N1, XON/XOFF, text commands; codec: ``codec/freestyle_optium``).

Supports serial number, firmware, display unit, clock read/set (``$tim``, whole minutes) and the glucose
results of the memory dump (beta-ketone results are skipped). The dump has one checksum over all of it,
so no result is used before the whole dump arrived and verified: a dump cut halfway keeps nothing (the
next visit takes everything again; the store drops what it already has). Retries follow the protocol: a
command answered with a lone empty line (the meter ignoring the first command) or with a damaged or no
answer is sent again, up to ``retries`` times. Results have no numbers (``sequence=None``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime

from gateway.errors import DeviceTimeout, ProtocolError, RecordError
from gateway.meters.codec import freestyle_optium as codec
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


class FreeStyleOptium(SerialDriver):
    """FreeStyle Optium (and Optium Neo in serial mode)."""

    family = "freestyle_optium"
    model = "FreeStyle Optium"
    line = LineSettings(baudrate=19200, xonxoff=True)

    def __init__(self, port: SerialPort, timeouts: Timeouts) -> None:
        super().__init__(port, timeouts)
        self._decoder = codec.ResponseDecoder()
        self._meter: codec.Info | None = None

    async def _exchange(
        self, command: str, *, dump: bool = False, timeout: float | None = None
    ) -> codec.Dump | list[str]:
        timeout = timeout or self.timeouts.response_s
        last: ProtocolError | DeviceTimeout | None = None
        for attempt in range(self.timeouts.retries + 1):
            if attempt:
                self.retried += 1
                self._log_retry("%s: repeating $%s after: %s", self.port.path, command[:4], last)
                await self._drain()
            self._decoder.clear()
            self.port.discard_input()
            await self.port.write(codec.encode_command(command))
            try:
                while (response := self._decoder.next_response(dump=dump)) is None:
                    self._decoder.receive_data(await self._read(timeout))
                raw, lines = response
                if not lines:
                    last = DeviceTimeout(f"{self.port.path}: the meter ignored ${command[:4]} (empty answer)")
                    continue
                return codec.parse_dump(raw, lines) if dump else lines
            except (ProtocolError, DeviceTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def _colq(self, timeout: float | None = None) -> codec.Info:
        lines = await self._exchange(codec.CMD_INFO, timeout=timeout)
        assert isinstance(lines, list)
        self._meter = codec.parse_info(lines)
        return self._meter

    async def _identify(self, *, probe: bool) -> MeterInfo:
        info = await self._colq(self.timeouts.probe_s if probe else None)
        return self._meter_info(info.serial, info.version)

    async def read_clock(self) -> datetime | None:
        return (await self._colq()).clock

    async def set_clock(self, meter_time: datetime) -> None:
        lines = await self._exchange(codec.set_clock_command(meter_time))
        assert isinstance(lines, list)
        codec.parse_ok(lines)

    async def count_records(self, since_sequence: int | None) -> int | None:
        return (self._meter or await self._colq()).count

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        dump = await self._exchange(codec.CMD_DUMP, dump=True)
        assert isinstance(dump, codec.Dump)
        info = await self.read_info()
        if dump.serial != info.serial:
            raise RecordError(f"dump names meter {dump.serial}, not {info.serial}")
        mmol = self._meter is not None and self._meter.unit is Unit.MMOL_L
        for result in dump.results:
            if result.kind != codec.GLUCOSE:
                continue
            flags = [FLAG_ABOVE_RANGE] if result.above_range else []
            if mmol:
                flags.append(FLAG_DISPLAYS_MMOL_L)
            yield MeterRecord(
                sequence=None,
                meter_time=result.meter_time,
                value=float(result.value_mg_dl),
                unit=Unit.MG_DL,
                sample_type=LABELLED_SAMPLE_TYPE,
                flags=tuple(flags),
            )
