"""Glucose meters and blood pressure cuffs: codecs (pure, bytes <-> events), transports (bleak, pyserial), one
download session.

Every meter family (and the Bluetooth cuffs), whatever its transport, is driven through the
:class:`MeterDriver` protocol, so the download session (cursor, clock correction, patient link, dedupe,
progress) exists once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Protocol

from gateway.desk import BleSyncRequest, MeterSyncRequest, SerialSyncRequest
from gateway.records import CuffRecord, MeterInfo, MeterRecord


class MeterDriver(Protocol):
    """A connected meter, as the download session sees it.

    Implementations translate their library's exceptions into DeviceError / ProtocolError.
    """

    @property
    def newest_first(self) -> bool:
        """True when :meth:`records` yields the meter's memory newest first and stopping early is cheap (one
        request per record). The session then stops at the newest record of the last *complete* download."""
        ...

    async def read_info(self) -> MeterInfo:
        """Identity of the meter (family, serial, model, firmware)."""
        ...

    async def read_clock(self) -> datetime | None:
        """The meter's current wall-clock time (naive), or None when the meter cannot tell."""
        ...

    async def count_records(self, since_sequence: int | None) -> int | None:
        """How many records a download from ``since_sequence`` (exclusive) will yield, when knowable."""
        ...

    def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord | CuffRecord]:
        """Yield stored records (glucose, or blood pressure from a cuff), newer than ``since_sequence`` where the
        protocol can filter."""
        ...

    async def set_clock(self, meter_time: datetime) -> None:
        """Set the meter's clock (only called when configured and the gateway's clock is trusted)."""
        ...

    async def close(self) -> None:
        """Release the link."""
        ...


BLE_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
"""A Bluetooth device address as BlueZ writes it."""


BLE_FAMILIES = ("gls", "bps")
"""Device id prefixes of the Bluetooth LE families: Glucose Service meters, Blood Pressure Service cuffs."""


def is_ble_target(target: str) -> bool:
    """True for a Bluetooth address, a GLS meter id (``gls:<serial>``) or a cuff id (``bps:<serial>``)."""
    return bool(BLE_ADDRESS.match(target)) or target.startswith(tuple(f"{family}:" for family in BLE_FAMILIES))


def sync_request_type(target: str) -> type[MeterSyncRequest]:
    """The desk request that downloads ``target``: Bluetooth targets are BLE downloads, the rest serial."""
    return BleSyncRequest if is_ble_target(target) else SerialSyncRequest
