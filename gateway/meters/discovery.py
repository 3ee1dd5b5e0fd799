"""What is attached: USB-serial cables by VID:PID, hotplug by polling, probing families, one ``open_driver``.

Supports:

- :data:`KNOWN_CABLES`: USB VID:PID -> the meter families that ship with (or are sold for) that cable;
  an unknown USB-serial device is left alone (never probed: it may be a modem or a printer);
- :class:`PortWatcher`: polls ``serial.tools.list_ports`` and the CP2110 USB-HID bridges (TaiDoc cables,
  ``cp2110://`` ports), plus the configured extra ports (``meters.serial.ports``, e.g. emulator ptys) and
  reports ports that appeared and disappeared;
- :func:`identify`: tries each candidate family's handshake on a port and returns the open driver of the
  first that answers, or raises DeviceNotFound when none does;
- :func:`open_driver`: the one entry point for "download this target": a Bluetooth address goes to the
  GLS driver (:mod:`gateway.meters.drivers.gls`), anything else is a serial port whose families are probed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.errors import DeviceDisconnected, DeviceError, DeviceNotFound, ProtocolError
from gateway.meters import BLE_ADDRESS, MeterDriver
from gateway.meters.drivers import FAMILIES, SerialDriver, Timeouts
from gateway.meters.transport.serial import PortInfo, is_url, list_hid_uart_bridges, list_serial_ports, port_for

_logger = logging.getLogger(__name__)

ALL_FAMILIES: tuple[str, ...] = tuple(FAMILIES)
LIFESCAN = ("onetouch_ultraeasy", "onetouch_ultra2")
ABBOTT = ("freestyle_optium",)
TAIDOC = ("taidoc_td42xx",)

KNOWN_CABLES: dict[tuple[int, int], tuple[str, tuple[str, ...]]] = {
    (0x067B, 0x2303): ("Prolific PL2303 (LifeScan OneTouch USB cable)", LIFESCAN),
    (0x067B, 0x23A3): ("Prolific PL2303GC", LIFESCAN),
    (0x1A61, 0x3410): ("Abbott FreeStyle cable (TI TUSB3410, stereo plug)", ABBOTT),
    (0x1A61, 0x3420): ("Abbott FreeStyle cable (TI TUSB3410, strip port)", ABBOTT),
    (0x0451, 0x3410): ("TI TUSB3410 serial cable", ABBOTT),
    (0x0403, 0x6001): ("FTDI FT232R serial cable", ALL_FAMILIES),
    (0x0403, 0x6015): ("FTDI FT231X serial cable", ALL_FAMILIES),
    (0x10C4, 0xEA60): ("Silicon Labs CP210x serial cable", ALL_FAMILIES),
    (0x10C4, 0xEA80): ("Silicon Labs CP2110 USB-HID UART (TaiDoc TD-42xx cable)", TAIDOC),
}
"""USB identities of meter cables. Generic bridges (FTDI, Silicon Labs) are tried with every family."""


def candidate_families(vid: int | None, pid: int | None) -> tuple[str, ...]:
    """Families worth probing on a USB device; ``()`` for a device that is not a known meter cable."""
    if vid is None or pid is None:
        return ()
    known = KNOWN_CABLES.get((vid, pid))
    return known[1] if known else ()


@dataclass(frozen=True, slots=True)
class SeenPort:
    """A port the watcher reports, with the families to try there."""

    path: str
    families: tuple[str, ...]
    description: str | None = None


def list_meter_ports() -> list[PortInfo]:
    """Serial ports and CP2110 USB-HID bridges present now."""
    return list_serial_ports() + list_hid_uart_bridges()


class PortWatcher:
    """Hotplug by polling: each :meth:`poll` returns (ports that appeared, paths that disappeared).

    ``lister`` is injectable (tests); configured extra ports count as present while their path exists and
    are probed with every family.
    """

    def __init__(
        self,
        extra_ports: Sequence[str] = (),
        *,
        lister: Callable[[], list[PortInfo]] = list_meter_ports,
    ) -> None:
        self.extra_ports = tuple(extra_ports)
        self._lister = lister
        self._present: dict[str, SeenPort] = {}

    def scan(self) -> dict[str, SeenPort]:
        """Ports present now."""
        found: dict[str, SeenPort] = {}
        for info in self._lister():
            if info.vid is None:
                continue  # on-board UARTs (ttyS*, ttyAMA*) are not meter cables
            families = candidate_families(info.vid, info.pid)
            label = KNOWN_CABLES.get((info.vid, info.pid or 0), (info.description, ()))[0]
            found[info.device] = SeenPort(info.device, families, label)
        for path in self.extra_ports:
            if Path(path).exists():
                found[path] = SeenPort(path, ALL_FAMILIES, "configured port")
        return found

    def poll(self) -> tuple[list[SeenPort], list[str]]:
        """Compare with the previous poll."""
        now = self.scan()
        added = [port for path, port in now.items() if path not in self._present]
        removed = [path for path in self._present if path not in now]
        self._present = now
        return added, removed

    @property
    def present(self) -> dict[str, SeenPort]:
        return dict(self._present)


async def identify(path: str, families: Sequence[str], timeouts: Timeouts | None = None) -> SerialDriver:
    """Probe ``families`` in order on ``path``; return the first that identifies itself (opened).

    Raises DeviceNotFound when none answers, DeviceDisconnected when the port vanishes meanwhile.
    """
    if not families:
        raise DeviceNotFound(f"{path}: not a known meter cable; not probed", device_id=path)
    problems: list[str] = []
    for family in families:
        driver_class = FAMILIES[family]
        try:
            return await driver_class.open(path, timeouts=timeouts, probe=True)
        except (DeviceNotFound, DeviceDisconnected):
            raise
        except (ProtocolError, DeviceError) as exc:
            _logger.debug("%s: not a %s meter: %s", path, family, exc)
            problems.append(f"{family}: {type(exc).__name__}")
    raise DeviceNotFound(f"{path}: no known meter answered ({'; '.join(problems)})", device_id=path)


def timeouts_from(config: GatewayConfig) -> Timeouts:
    """Driver timeouts and retries from ``meters.serial``."""
    section = config.meters.serial
    return Timeouts(response_s=section.response_timeout_s, retries=section.retries, probe_s=section.probe_timeout_s)


def families_for_port(path: str, lister: Callable[[], list[PortInfo]] = list_meter_ports) -> tuple[str, ...]:
    """Families to try on a port named explicitly (CLI, desk): its cable's, else every family."""
    port = port_for(path)  # a hidraw node (TaiDoc's CP2110 bridge) is listed as its cp2110:// URL
    resolved = port if is_url(port) else str(Path(path).resolve())
    for info in lister():
        if info.device in (path, resolved):
            return candidate_families(info.vid, info.pid) or ALL_FAMILIES
    return ALL_FAMILIES


async def open_driver(target: str, config: GatewayConfig) -> MeterDriver:
    """Open the meter at ``target``: a Bluetooth address (a GLS meter or a blood pressure cuff, by the service it
    offers) or a serial port (families probed)."""
    if BLE_ADDRESS.match(target):
        from gateway.meters.drivers import bluetooth  # lazy: bleak and D-Bus only when a BLE device is asked for

        return await bluetooth.open_driver(target, config)
    if not is_url(target) and not Path(target).exists():
        raise DeviceNotFound(f"{target}: no such serial port", device_id=target)
    return await identify(target, families_for_port(target), timeouts_from(config))
