"""Meter drivers, one per protocol family: the USB-serial ones and the registry the discovery probes, and the
Bluetooth LE Glucose Service driver (:mod:`gateway.meters.drivers.gls`, imported only where a BLE meter is
opened, so that bleak loads only then).

=====================  ===========================================  ==================
family                 meters                                       codec
=====================  ===========================================  ==================
``onetouch_ultra2``    LifeScan OneTouch Ultra 2                    ``lifescan_ascii``
``onetouch_ultraeasy`` LifeScan OneTouch UltraEasy / Ultra Mini     ``lifescan_binary``
``freestyle_optium``   Abbott FreeStyle Optium                      ``freestyle_optium``
``taidoc_td42xx``      TaiDoc TD-42xx (FORA, GlucoRx Nexus, ...)    ``taidoc``
=====================  ===========================================  ==================

``meter_id`` is ``f"{family}:{serial}"``. None of these meters numbers its records, so records carry
``sequence=None`` and the store dedupes them on (meter_id, meter_time, value). Adding a serial family is a
driver module and one entry in :data:`FAMILIES` (and its cables in ``discovery.KNOWN_CABLES``).

``gls`` (Bluetooth LE, any meter with the Glucose Service) is found by scanning, not probed on a port, so it
is not in :data:`FAMILIES`; its records are numbered (``meter_id`` ``gls:<serial>``).
"""

from __future__ import annotations

from gateway.meters.drivers.base import FLAG_DISPLAYS_MMOL_L, SerialDriver, Timeouts
from gateway.meters.drivers.freestyle_optium import FreeStyleOptium
from gateway.meters.drivers.onetouch_ultra2 import OneTouchUltra2
from gateway.meters.drivers.onetouch_ultraeasy import OneTouchUltraEasy
from gateway.meters.drivers.taidoc_td42xx import TaiDocTD42xx

FAMILIES: dict[str, type[SerialDriver]] = {
    driver.family: driver for driver in (OneTouchUltra2, OneTouchUltraEasy, FreeStyleOptium, TaiDocTD42xx)
}

__all__ = [
    "FAMILIES",
    "FLAG_DISPLAYS_MMOL_L",
    "FreeStyleOptium",
    "OneTouchUltra2",
    "OneTouchUltraEasy",
    "SerialDriver",
    "TaiDocTD42xx",
    "Timeouts",
]
