"""Bluetooth LE health devices: which driver a peripheral needs, chosen by the service it offers.

=========================  ==========  ==================================================
service                    family      driver
=========================  ==========  ==================================================
Glucose 0x1808             ``gls``     :class:`~gateway.meters.drivers.gls.GlsDriver`
Blood Pressure 0x1810      ``bps``     :class:`~gateway.meters.drivers.bps.BpsDriver`
=========================  ==========  ==================================================

:func:`scan` finds both kinds on the configured adapter; :func:`open_driver` connects once, looks at the GATT
services, and sets up the driver of the first service in :data:`SERVICES` the peripheral offers (a desk request
names an address, not a kind of device). Imported only where a Bluetooth device is really opened, so that
bleak loads only then.
"""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.errors import DeviceError
from gateway.meters.codec import bps, gls
from gateway.meters.drivers.bps import BpsDriver
from gateway.meters.drivers.gls import FoundMeter, GlsDriver
from gateway.meters.transport.ble import BleLink
from gateway.meters.transport.ble import scan as scan_ble

SERVICES: dict[str, type[GlsDriver] | type[BpsDriver]] = {
    gls.GLUCOSE_SERVICE_UUID: GlsDriver,
    bps.BLOOD_PRESSURE_SERVICE_UUID: BpsDriver,
}
"""Service UUID -> driver, in the order a device offering several is taken."""

BleDriver = GlsDriver | BpsDriver


async def scan(config: GatewayConfig, timeout: float | None = None) -> list[FoundMeter]:
    """Glucose meters and blood pressure cuffs advertising on ``config.meters.ble.adapter``, strongest first."""
    seen = await scan_ble(config.meters.ble, list(SERVICES), timeout)
    found = []
    for ad in seen:
        family = next((driver.family for uuid, driver in SERVICES.items() if uuid in ad.service_uuids), None)
        if family is not None:
            found.append(FoundMeter(ad.address, ad.name, ad.rssi, family=family))
    return found


async def open_driver(address: str, config: GatewayConfig) -> BleDriver:
    """Connect to the device at ``address`` and set up the driver of the service it offers."""
    ble = config.meters.ble
    link = BleLink(address, ble)
    chosen: list[BleDriver] = []

    async def setup(link: BleLink) -> None:
        for uuid, driver_type in SERVICES.items():
            if link.has_service(uuid):
                chosen[:] = [driver_type(address, ble, link=link)]
                await chosen[0].setup(link)
                return
        raise DeviceError(f"{address} offers neither the Glucose nor the Blood Pressure Service", device_id=address)

    await link.connect(setup)
    return chosen[0]


__all__ = ["SERVICES", "BleDriver", "open_driver", "scan"]
