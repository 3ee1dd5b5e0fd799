"""An emulated Bluetooth LE peripheral: a BlueZ GATT server application and advertisement over D-Bus.

The shared plumbing of the emulated devices (:mod:`gateway.emulate.ble_meter`, :mod:`gateway.emulate.ble_cuff`):
a :class:`GattPeripheral` exports its services and characteristics as ``org.bluez.GattService1`` /
``GattCharacteristic1`` objects and an ``LEAdvertisement1`` (written with dbus-fast), registers them on one
adapter of the (emulated) BlueZ (``bluez_env.BluezEnv``), and lets the gateway's unmodified bleak code scan,
connect, pair, read, write and subscribe. A device subclass supplies its GATT table, what its characteristics
answer (:meth:`GattPeripheral.on_read`, :meth:`~GattPeripheral.on_write`) and what it does when a central
subscribes or goes (:meth:`~GattPeripheral.on_start_notify`, :meth:`~GattPeripheral.on_stop_notify`).

Values are sent paced on bluezoo's Confirm() call (:meth:`Characteristic.send`): an unpaced burst of hundreds
of signals fills the socket and dbus-fast drops the bus.
"""

# No "from __future__ import annotations" here: dbus-fast reads the D-Bus signatures from the annotations, and a
# postponed "-> None" would reach it as the string "None".
import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Self

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusBytes, DBusDict, DBusObjectPath, DBusSignature, DBusStr, DBusUInt16
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method

_logger = logging.getLogger(__name__)

BLUEZ = "org.bluez"
NOT_PAIRED = ("org.bluez.Error.NotPermitted", "Not paired")
"""What BlueZ answers for ATT Insufficient Authentication / Encryption (src/gatt-client.c)."""
NOT_PERMITTED = "org.bluez.Error.NotPermitted"
DBusStrList = Annotated[list[str], DBusSignature("as")]

GattTable = tuple[str, list[tuple[str, list[str]]]]
"""One service of a GATT table: (service UUID, [(characteristic UUID, BlueZ flags)])."""


class _Application(ServiceInterface):
    """Root of the GATT application; dbus-fast answers ObjectManager for exported children."""


class _Service(ServiceInterface):
    def __init__(self, path: str, uuid: str) -> None:
        super().__init__("org.bluez.GattService1")
        self.path = path
        self._uuid = uuid

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return True


class Characteristic(ServiceInterface):
    """One characteristic of an emulated peripheral; its reads, writes and subscriptions go to the peripheral."""

    # No Notifying / Handle / NotifyAcquired properties on purpose: bluezoo forwards StartNotify only while
    # Notifying is missing or false, assigns handles itself, and uses StartNotify + PropertiesChanged (not a
    # socket) when NotifyAcquired is missing.
    def __init__(self, peripheral: "GattPeripheral", path: str, service: _Service, uuid: str, flags: list[str]) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.peripheral = peripheral
        self.path = path
        self.service = service
        self.uuid = uuid
        self._flags = flags
        self._value = b""
        self.notifying = False
        self._confirmed: asyncio.Future[None] | None = None

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return self.service.path

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrList:
        return self._flags

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self._value

    @method()
    async def ReadValue(self, options: DBusDict) -> DBusBytes:
        return await self.peripheral.on_read(self, plain(options))

    @method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        await self.peripheral.on_write(self, bytes(value), plain(options))

    @method()
    def StartNotify(self) -> None:
        self.notifying = True
        self.peripheral.on_start_notify(self)

    @method()
    def StopNotify(self) -> None:
        self.notifying = False
        self.peripheral.on_stop_notify(self)

    @method()
    def Confirm(self) -> None:
        # bluezoo calls this after forwarding each value (notifications too): our flow control.
        if self._confirmed is not None and not self._confirmed.done():
            self._confirmed.set_result(None)

    async def send(self, value: bytes, timeout_s: float = 2.0) -> bool:
        """Notify/indicate ``value`` and wait until bluezoo forwarded it (its Confirm); True once confirmed."""
        self._value = bytes(value)
        if not self.notifying:
            self.emit_properties_changed({"Value": self._value})
            return False
        self._confirmed = asyncio.get_running_loop().create_future()
        self.emit_properties_changed({"Value": self._value})
        try:
            await asyncio.wait_for(self._confirmed, timeout_s)
            return True
        except TimeoutError:
            _logger.debug("no confirm for %s within %.1f s", self.uuid, timeout_s)
            return False
        finally:
            self._confirmed = None


class _Advertisement(ServiceInterface):
    def __init__(self, name: str, service_uuids: Sequence[str], appearance: int) -> None:
        super().__init__("org.bluez.LEAdvertisement1")
        self._name = name
        self._uuids = list(service_uuids)
        self._appearance = appearance

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return "peripheral"

    @dbus_property(access=PropertyAccess.READ)
    def ServiceUUIDs(self) -> DBusStrList:
        return self._uuids

    @dbus_property(access=PropertyAccess.READ)
    def LocalName(self) -> DBusStr:
        return self._name

    @dbus_property(access=PropertyAccess.READ)
    def Appearance(self) -> DBusUInt16:
        return self._appearance

    @dbus_property(access=PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return True  # bluezoo shows only discoverable advertisers

    @method()
    def Release(self) -> None:
        pass


def plain(options: dict[str, Any]) -> dict[str, Any]:
    """D-Bus options with their Variants unwrapped."""
    return {k: (v.value if isinstance(v, Variant) else v) for k, v in (options or {}).items()}


class GattPeripheral:
    """A GATT server on one emulated adapter. ``await start()`` registers it; ``await stop()`` removes it.

    Subclasses give :meth:`gatt_tables`, the advertised name, service UUIDs and appearance, and answer reads,
    writes and subscriptions; everything else (export, registration, link loss, bonding checks) is here.
    """

    app_interface = "org.clinicgateway.App1"

    def __init__(
        self,
        adapter_path: str,
        *,
        name: str,
        advertised_uuids: Sequence[str],
        appearance: int,
        central_adapter_path: str = "/org/bluez/hci0",
        app_path: str = "/org/clinicgateway/app",
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.adapter_path = adapter_path
        self.name = name
        self.advertised_uuids = tuple(advertised_uuids)
        self.appearance = appearance
        self.central_adapter_path = central_adapter_path
        self.app_path = app_path
        self.now = now
        self.address: str | None = None
        self.log: list[tuple[Any, ...]] = []
        self.chars: dict[str, Characteristic] = {}
        self._bus: MessageBus | None = None

    # -- what a device supplies ----------------------------------------------------------------------------
    def gatt_tables(self) -> list[GattTable]:
        """The device's services and characteristics."""
        raise NotImplementedError

    async def on_read(self, char: Characteristic, options: dict[str, Any]) -> bytes:
        """A central reads ``char``."""
        raise DBusError(NOT_PERMITTED, "Read not permitted")

    async def on_write(self, char: Characteristic, value: bytes, options: dict[str, Any]) -> None:
        """A central writes ``value`` to ``char``."""
        raise DBusError(NOT_PERMITTED, "Write not permitted")

    def on_start_notify(self, char: Characteristic) -> None:
        """A central subscribed to ``char``."""

    def on_stop_notify(self, char: Characteristic) -> None:
        """A central unsubscribed from ``char``, or (bluezoo reconnect fix) the link went down."""

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> Self:
        """Export the GATT application and the advertisement, and register both on the adapter."""
        self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        self._bus.export(self.app_path, _Application(self.app_interface))
        for s_index, (service_uuid, chars) in enumerate(self.gatt_tables()):
            service = _Service(f"{self.app_path}/service{s_index}", service_uuid)
            self._bus.export(service.path, service)
            for c_index, (char_uuid, flags) in enumerate(chars):
                char = Characteristic(self, f"{service.path}/char{c_index}", service, char_uuid, flags)
                self._bus.export(char.path, char)
                self.chars[char_uuid] = char
        advert_path = f"{self.app_path}/advert0"
        self._bus.export(advert_path, _Advertisement(self.name, self.advertised_uuids, self.appearance))
        self.address = str(await self.get_property(self.adapter_path, "org.bluez.Adapter1", "Address"))
        await self.call(self.adapter_path, "org.bluez.GattManager1", "RegisterApplication", "oa{sv}",
                        [self.app_path, {}])  # fmt: skip
        await self.call(self.adapter_path, "org.bluez.LEAdvertisingManager1", "RegisterAdvertisement", "oa{sv}",
                        [advert_path, {}])  # fmt: skip
        return self

    async def stop(self) -> None:
        """Leave the bus: bluezoo drops the application and the advertisement when our name goes."""
        if self._bus is not None and self._bus.connected:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        self._bus = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- D-Bus helpers --------------------------------------------------------------------------------------
    async def call(
        self, path: str, interface: str, member: str, signature: str = "", body: list[Any] | None = None
    ) -> Any:
        """Call ``member`` on BlueZ's object ``path``; the reply's body."""
        assert self._bus is not None
        reply = await self._bus.call(
            Message(destination=BLUEZ, path=path, interface=interface, member=member, signature=signature,
                    body=body or [])
        )  # fmt: skip
        if reply is None or reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member} on {path}: {None if reply is None else (reply.error_name, reply.body)}")
        return reply.body

    async def get_property(self, path: str, interface: str, prop: str) -> Any:
        """A property of BlueZ's object ``path``."""
        body = await self.call(path, "org.freedesktop.DBus.Properties", "Get", "ss", [interface, prop])
        value = body[0]
        return value.value if isinstance(value, Variant) else value

    def central_device_path(self) -> str:
        """The D-Bus path of this peripheral as the central's adapter sees it."""
        return f"{self.central_adapter_path}/dev_{(self.address or '').replace(':', '_')}"

    async def drop_link(self) -> None:
        """Lose the link, as when the patient walks away. bluezoo does not pass a peripheral's own disconnect to
        the central, so disconnect the central's device object for this peripheral: bleak sees a link loss."""
        await self.call(self.central_device_path(), "org.bluez.Device1", "Disconnect")

    async def is_paired(self, options: dict[str, Any]) -> bool:
        """True when the central in a read/write's ``options`` has paired with this peripheral."""
        device = options.get("device")
        return bool(device) and bool(await self.get_property(str(device), "org.bluez.Device1", "Paired"))

    async def central_paired(self) -> bool:
        """True when the gateway's adapter has paired with this peripheral."""
        with contextlib.suppress(RuntimeError):
            return bool(await self.get_property(self.central_device_path(), "org.bluez.Device1", "Paired"))
        return False

    async def require_bond(self, options: dict[str, Any]) -> None:
        """Refuse (BlueZ's "Not paired") a read or write from a central that has not paired."""
        if not await self.is_paired(options):
            self.log.append(("refused_unpaired", options.get("device")))
            raise DBusError(*NOT_PAIRED)
