"""USB-serial meter drivers, one per protocol family, and the registry the discovery probes.

=====================  ===========================================  ==================
family                 meters                                       codec
=====================  ===========================================  ==================
``onetouch_ultra2``    LifeScan OneTouch Ultra 2                    ``lifescan_ascii``
``onetouch_ultraeasy`` LifeScan OneTouch UltraEasy / Ultra Mini     ``lifescan_binary``
``freestyle_optium``   Abbott FreeStyle Optium                      ``freestyle_optium``
``taidoc_td42xx``      TaiDoc TD-42xx (FORA, GlucoRx Nexus, ...)    ``taidoc``
=====================  ===========================================  ==================

``meter_id`` is ``f"{family}:{serial}"``. None of these meters numbers its records, so records carry
``sequence=None`` and the store dedupes them on (meter_id, meter_time, value).
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
