# SPDX-License-Identifier: GPL-2.0-only
#
# This file patches bluezoo (https://pypi.org/project/bluezoo/, GPL-2.0-only) at run time and is therefore
# distributed under GPL-2.0-only, unlike the rest of clinic-gateway (Apache-2.0). See LICENSE-NOTE.md here.
# It is a test and demo tool: it runs only as its own process (gateway/emulate/bluez_env.py starts it with
# subprocess) and is never imported by the gateway package.
"""Run bluezoo (a mock of BlueZ's org.bluez D-Bus API) with three run-time fixes for bluezoo 1.0.2.

Same command line as ``bluezoo``::

    python tools/bluezoo/run_bluezoo.py --auto-enable --scan-interval=1 -a 00:00:00:01:00:00 -a 00:00:00:02:00:00

Fixes (each needed by real bleak 3.1 talking to it; pin bluezoo==1.0.2, they touch its internals):

readvertise
    BlueZ emits PropertiesChanged(RSSI) on Device1 for every advertisement seen while discovering; bluezoo
    emits only when advertising data changed. bleak learns about devices only from those signals, so a meter
    seen once is never found again by a second scan or by ``BleakClient(address)``. We emit an RSSI change for
    every LE device bluezoo re-sees on a scan tick.
reconnect
    On disconnect bluezoo leaves the per-connection GATT objects exported and subscribed, so a second connect
    re-exports the same object paths and duplicates notifications. We remove them, reset ServicesResolved and,
    as bluetoothd does when the last subscriber goes, call StopNotify on the GATT server.
pair
    BlueZ's Device1.Pair on a disconnected LE device connects it, and pairs "Just Works" when no agent (or a
    NoInputNoOutput one) is registered. bluezoo neither connects nor pairs without an agent. We pair Just
    Works and connect, so ``BleakClient(address, pair=True)`` works as it does against bluetoothd.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

from bluezoo import bluezoo as bluezoo_main
from bluezoo.adapter import Adapter
from bluezoo.device import Device
from bluezoo.log import logger

_RSSI_VALUES = itertools.cycle([-52, -55, -58, -54])


def _patch_readvertise() -> None:
    original = Adapter.add_device

    async def add_device(self: Any, device: Any) -> None:
        path = f"{self.get_object_path()}/dev_{device.address.replace(':', '_')}"
        known = self.devices.get(path)
        await original(self, device)
        if known is not None and device.is_le:
            known.rssi = next(_RSSI_VALUES)
            known.properties_changed.emit(("org.bluez.Device1", {"RSSI": ("n", known.rssi)}, []))

    Adapter.add_device = add_device


def _patch_reconnect() -> None:
    original = Device.disconnect

    async def disconnect(self: Any, uuid: str | None = None) -> None:
        await original(self, uuid)
        # Children before parents (descriptor, characteristic, service): reverse path order.
        for _path, link in sorted(self.services.items(), key=lambda item: item[0], reverse=True):
            subscription = getattr(link, "client_props_changed_subscription", None)
            # pyventus' unsubscribe() is True only for a live subscription (bluezoo's placeholder gives None).
            if subscription is not None and subscription.unsubscribe() is True:
                try:
                    await link.client.StopNotify()
                except Exception as exc:  # the server may already be gone
                    logger.debug(f"StopNotify on {link} failed: {exc}")
            with contextlib.suppress(KeyError):
                self.peer_adapter.mock.remove_object(link)
        self.services.clear()
        if self.services_resolved:
            await self.ServicesResolved.set_async(False)
        if self.peer is not None and self.peer.services_resolved:
            await self.peer.ServicesResolved.set_async(False)

    Device.disconnect = disconnect


def _patch_pair() -> None:
    async def pair(self: Any) -> None:
        agent = self.adapter.mock.root.agent
        if agent is not None and agent.capability != "NoInputNoOutput":
            raise NotImplementedError("bluezoo emulation: only Just Works pairing")
        logger.info(f"Pairing {self} with {self.adapter} (Just Works)")
        self.peer.paired = True
        self.peer.bonded = True
        await self.peer_adapter.add_device(self.peer)
        await self.Paired.set_async(True)
        self.bonded = True  # bluezoo 1.0.2's Bonded setter assigns a misspelt attribute
        await self.Bonded.set_async(True)
        if not self.connected:
            await self.connect()

    Device.pair = pair


def main() -> None:
    """Apply the fixes and hand over to bluezoo's own command line."""
    _patch_readvertise()
    _patch_reconnect()
    _patch_pair()
    logger.debug("run_bluezoo: readvertise, reconnect and pair fixes applied")
    bluezoo_main.main()


if __name__ == "__main__":
    main()
