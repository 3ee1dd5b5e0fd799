"""bleak adapter: connect to a Bluetooth LE peripheral, read, write, and queue its notifications; nothing else.

The only module that imports :mod:`bleak`, and the one place its exceptions are translated into
:mod:`gateway.errors` (:func:`_bleak_errors`), exactly as :mod:`gateway.meters.transport.serial` does for
pyserial. What the bytes mean is the driver's business (:mod:`gateway.meters.drivers.gls`, over the pure
codec :mod:`gateway.meters.codec.gls`).

Supports:

- :func:`scan`: peripherals advertising given service UUIDs on the configured adapter, strongest first;
- :class:`BleLink`: connect (timeouts, retries with backoff), pair/bond when the peripheral answers "not
  paired" (reconnect with ``pair=True``, once), GATT reads and writes with a timeout, notifications and
  indications of subscribed characteristics into an :class:`asyncio.Queue` (``None`` there: link lost),
  disconnect.

The adapter is always named explicitly (``config.meters.ble.adapter``), never left to bleak's default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

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

from gateway.config import BleSection
from gateway.errors import DeviceDisconnected, DeviceError, DeviceNotFound, DeviceTimeout, ProtocolError

_logger = logging.getLogger(__name__)

_PAIRING_CODES = {
    BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHENTICATION,
    BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION,
    BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION_KEY_SIZE,
    BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHORIZATION,
}


class PairingRequired(DeviceError):
    """The peripheral refused a read or write until the gateway pairs (BlueZ "Not paired", ATT 0x05/0x0F)."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    """A peripheral seen advertising: its address, name, signal and advertised service UUIDs (lower case)."""

    address: str
    name: str | None
    rssi: int | None
    service_uuids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification or indication: the characteristic's UUID (lower case) and its value."""

    uuid: str
    data: bytes


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


async def scan(ble: BleSection, service_uuids: Sequence[str], timeout: float | None = None) -> list[Advertisement]:
    """Peripherals advertising any of ``service_uuids`` on ``ble.adapter``, strongest signal first."""
    with _bleak_errors(f"scanning on {ble.adapter}", None):
        found = await BleakScanner.discover(
            timeout=timeout or ble.scan_timeout_s,
            return_adv=True,
            service_uuids=list(service_uuids),
            bluez=_scanner_args(ble),
        )
    seen = [
        Advertisement(
            address=device.address,
            name=adv.local_name or device.name,
            rssi=adv.rssi,
            service_uuids=tuple(u.lower() for u in adv.service_uuids),
        )
        for device, adv in found.values()
    ]
    return sorted(seen, key=lambda a: (-(a.rssi if a.rssi is not None else -999), a.address))


Setup = Callable[["BleLink"], Awaitable[None]]
"""What a driver does on a fresh connection (first reads, subscriptions); may raise PairingRequired."""


class BleLink:
    """One Bluetooth LE peripheral at ``address``: GATT reads and writes, and its notifications in
    :attr:`notifications` (``None`` there when the link is lost). Every method may raise DeviceError."""

    def __init__(self, address: str, ble: BleSection, *, device_id: str | None = None) -> None:
        self.address = address
        self.ble = ble
        self.device_id = device_id or address
        """Named in errors (the driver sets the meter id once it knows it)."""
        self.paired = False
        self.notifications: asyncio.Queue[Notification | None] = asyncio.Queue()
        self._client: BleakClient | None = None

    # -- connection -----------------------------------------------------------------------------------------
    async def connect(self, setup: Setup) -> None:
        """Connect with retries and run ``setup``; pair (reconnect with ``pair=True``) when the peripheral
        demands it during setup. A second refusal after pairing is a plain DeviceError."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.ble.connect_retries + 1),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type((DeviceTimeout, DeviceNotFound, DeviceDisconnected)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    await self._connect_once(setup)
                except PairingRequired:
                    await self._connect_once(setup)  # now with pair=True

    async def _connect_once(self, setup: Setup) -> None:
        self.notifications = asyncio.Queue()  # nothing from an earlier attempt's link may leak into this one
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
            await setup(self)
        except PairingRequired:
            await self.disconnect()
            if self.paired:
                raise DeviceError(f"{self.address}: still refused after pairing", device_id=self.device_id) from None
            _logger.info("meter %s requires pairing; reconnecting with pairing", self.address)
            self.paired = True
            raise
        except BaseException:
            await self.disconnect()
            raise

    def _on_disconnect(self, client: BleakClient) -> None:
        if client is not self._client:
            return  # an earlier attempt's link, or our own close
        _logger.warning("meter %s: link lost", self.device_id)
        self.notifications.put_nowait(None)

    def _on_notify(self, characteristic: BleakGATTCharacteristic, data: bytearray) -> None:
        self.notifications.put_nowait(Notification(characteristic.uuid.lower(), bytes(data)))

    @property
    def is_connected(self) -> bool:
        """True while the link is up."""
        return self._client is not None and self._client.is_connected

    def _require_client(self) -> BleakClient:
        if self._client is None or not self._client.is_connected:
            raise DeviceDisconnected(f"{self.device_id}: not connected", device_id=self.device_id)
        return self._client

    async def disconnect(self) -> None:
        """Disconnect (best effort, never raises)."""
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(BleakError, TimeoutError, EOFError, OSError):
            await asyncio.wait_for(client.disconnect(), self.ble.connect_timeout_s)

    # -- GATT -------------------------------------------------------------------------------------------------
    def has_service(self, uuid: str) -> bool:
        """True when the connected peripheral offers the service ``uuid``."""
        return self._require_client().services.get_service(uuid) is not None

    def has_characteristic(self, uuid: str) -> bool:
        """True when the connected peripheral offers the characteristic ``uuid``."""
        return self._require_client().services.get_characteristic(uuid) is not None

    async def read(self, uuid: str, timeout: float) -> bytes:
        """Read the characteristic ``uuid`` (DeviceTimeout after ``timeout`` seconds)."""
        client = self._require_client()
        with _bleak_errors(f"reading {uuid[4:8]} of {self.device_id}", self.device_id):
            return bytes(await asyncio.wait_for(client.read_gatt_char(uuid), timeout))

    async def write(self, uuid: str, data: bytes, timeout: float) -> None:
        """Write ``data`` to ``uuid`` with response (DeviceTimeout after ``timeout`` seconds)."""
        client = self._require_client()
        with _bleak_errors(f"writing {uuid[4:8]} of {self.device_id}", self.device_id):
            await asyncio.wait_for(client.write_gatt_char(uuid, data, response=True), timeout)

    async def subscribe(self, *uuids: str) -> None:
        """Queue the notifications / indications of each characteristic in ``uuids``."""
        client = self._require_client()
        with _bleak_errors(f"subscribing to {self.device_id}", self.device_id):
            for uuid in uuids:
                await client.start_notify(uuid, self._on_notify)


__all__ = ["Advertisement", "BleLink", "Notification", "PairingRequired", "scan"]
