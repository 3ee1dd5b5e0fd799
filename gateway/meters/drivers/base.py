"""What every USB-serial meter driver shares: the port, timeouts and retries, identity, close.

A driver is a thin loop that shuttles bytes between a :class:`~gateway.meters.transport.serial.SerialPort`
and a pure codec; it implements :class:`~gateway.meters.MeterDriver` so the one download session
(cursor, clock correction, patient link, dedupe, progress) drives every family.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import ClassVar, Self

from gateway.errors import DeviceTimeout, GatewayError
from gateway.meters.transport.serial import LineSettings, SerialPort
from gateway.records import MeterInfo, MeterRecord, SampleType

_logger = logging.getLogger(__name__)

FLAG_DISPLAYS_MMOL_L = "meter_displays_mmol_l"
"""Serial meters send mg/dL whatever they display; this flag keeps the unit the patient saw."""
FLAG_ABOVE_RANGE = "above_meter_range"
"""The meter showed HI: the value is its upper limit, the true glucose is higher."""
FLAG_BELOW_RANGE = "below_meter_range"
"""The meter showed LO: the value is below what the strip can measure."""
LABELLED_SAMPLE_TYPE = SampleType.CAPILLARY_WHOLE_BLOOD
"""What the serial families' meters (OneTouch Ultra 2 / UltraEasy, FreeStyle Optium, TaiDoc TD-42xx) are
labelled for: fresh capillary whole blood from a fingertip or an alternate site. Their memory records no
sample type, so their readings carry this one (the contract codes it "Capillary blood by Glucometer")."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long to wait and how often to retry (the protocols' own numbers by default)."""

    response_s: float = 1.0
    """Silence after a request (or between two lines of a dump) that counts as no answer."""
    retries: int = 3
    """Retransmissions of a request that got no (or a damaged) answer."""
    probe_s: float = 0.5
    """Answer timeout while probing an unknown port for a family."""


class SerialDriver(ABC):
    """Base of the three family drivers."""

    family: ClassVar[str]
    model: ClassVar[str]
    line: ClassVar[LineSettings]
    newest_first: ClassVar[bool] = False

    def __init__(self, port: SerialPort, timeouts: Timeouts) -> None:
        self.port = port
        self.timeouts = timeouts
        self._info: MeterInfo | None = None
        self.retried = 0
        self.probing = False
        """True while trying whether the port is this family's: retries are then expected, logged at debug."""
        """Requests repeated because of a damaged or missing answer (for tests and logs)."""

    @classmethod
    async def open(cls, path: str, *, timeouts: Timeouts | None = None, probe: bool = False) -> Self:
        """Open ``path`` and identify the meter; raise ProtocolError/DeviceError when it is not this family."""
        timeouts = timeouts or Timeouts()
        port = await SerialPort.open(path, cls.line)
        # A probe of a port that may not be this family's waits less and repeats once (the Optium
        # may ignore the very first command), so trying the wrong families stays quick.
        driver = cls(port, replace(timeouts, response_s=timeouts.probe_s, retries=1) if probe else timeouts)
        driver.probing = probe
        try:
            port.discard_input()
            driver._info = await driver._identify(probe=probe)
        except BaseException:
            await port.close()
            raise
        driver.timeouts, driver.probing = timeouts, False
        _logger.debug("%s: %s meter %s", path, cls.family, driver._info.meter_id)
        return driver

    def _meter_info(self, serial: str, firmware: str | None) -> MeterInfo:
        return MeterInfo(
            meter_id=f"{self.family}:{serial}",
            family=self.family,
            transport="serial",
            serial=serial,
            model=self.model,
            firmware=firmware,
            address=self.port.path,
        )

    async def _read(self, timeout: float) -> bytes:
        data = await self.port.read_some(timeout)
        if not data:
            raise DeviceTimeout(f"{self.port.path}: no answer from the meter within {timeout:.1f} s", device_id=None)
        return data

    def _log_retry(self, message: str, *args: object) -> None:
        _logger.log(logging.DEBUG if self.probing else logging.WARNING, message, *args)

    async def _drain(self, quiet_s: float = 0.05) -> None:
        """Read and drop input until the line is quiet (the rest of a damaged answer), before a retry."""
        deadline = asyncio.get_running_loop().time() + max(self.timeouts.response_s, 1.0) * 5
        while await self.port.read_some(quiet_s) and asyncio.get_running_loop().time() < deadline:
            pass

    @abstractmethod
    async def _identify(self, *, probe: bool) -> MeterInfo:
        """Handshake and identity (serial number, firmware)."""

    async def read_info(self) -> MeterInfo:
        """Identity read when the driver was opened."""
        assert self._info is not None, "open() identifies the meter"
        return self._info

    @abstractmethod
    async def read_clock(self) -> datetime | None: ...

    @abstractmethod
    async def count_records(self, since_sequence: int | None) -> int | None: ...

    @abstractmethod
    def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]: ...

    @abstractmethod
    async def set_clock(self, meter_time: datetime) -> None: ...

    async def _goodbye(self) -> None:
        """Family-specific polite end of the link (best effort); most families need none."""
        return None

    async def close(self) -> None:
        """End the link politely when the meter is still there, then close the port."""
        try:
            await self._goodbye()
        except GatewayError as exc:
            _logger.debug("%s: closing link: %s", self.port.path, exc)
        await self.port.close()
