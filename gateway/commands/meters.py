"""Meter subcommands: ``gateway meters list | scan | sync``.

- ``list``: serial ports present now (with the meter families their cable suggests) and the meters the store
  knows (ids, family, last download; no patient data);
- ``scan``: Bluetooth LE glucose meters and blood pressure cuffs in range;
- ``sync TARGET [--patient ID] [--cuff-user N]``: download one meter or cuff (serial port or Bluetooth address;
  on a multi-user cuff, only user N's measurements are the patient's) into the store with
  the daemon's own download session, with a progress bar (n of N) on stderr. Run it with the daemon stopped
  or on a port the daemon does not hold (a serial port is opened exclusively).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

from gateway.commands.common import EXIT_ERROR, EXIT_OK, add_config_argument, config_from, local_time
from gateway.config import GatewayConfig
from gateway.meters.session import Progress, SessionResult

BAR_WIDTH = 30


class ProgressBar:
    """``[#####.....] 123/500 running`` redrawn in place on a terminal (one line per state otherwise)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_state: str | None = None

    def __call__(self, p: Progress) -> None:
        if p.total:
            filled = min(BAR_WIDTH, BAR_WIDTH * p.done // p.total)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            text = f"[{bar}] {p.done}/{p.total} {p.state}"
        else:
            text = f"{p.done} records {p.state}"
        if self.tty:
            self.stream.write("\r" + text.ljust(BAR_WIDTH + 24))
        elif p.state != self._last_state or p.done == p.total:
            self.stream.write(text + "\n")
        self._last_state = p.state
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def sync_target(
    config: GatewayConfig, target: str, *, patient_id: str | None, bar: ProgressBar | None, cuff_user: int | None = None
) -> SessionResult:
    """Open ``target``, run one DownloadSession into the configured store, close everything."""
    from gateway.meters.source import sync_meter
    from gateway.runtime import open_runtime

    runtime = open_runtime(config)
    try:
        return await sync_meter(
            target, config=config, store=runtime.store, clock=runtime.clock, patient_id=patient_id, operator="cli",
            on_progress=bar, cuff_user=cuff_user,
        )  # fmt: skip
    finally:
        runtime.store.close()


def _cmd_sync(args: argparse.Namespace) -> int:
    config = config_from(args)
    bar = ProgressBar(sys.stderr)
    result = asyncio.run(sync_target(config, args.target, patient_id=args.patient, bar=bar, cuff_user=args.cuff_user))
    bar.finish()
    meter = result.meter.meter_id if result.meter else "-"
    print(
        f"{meter}: {result.state}, {result.received} received, {result.added} new, {result.duplicates} already stored"
        + (f", {result.other_users} of other cuff users kept without a patient" if result.other_users else "")
        + (", a shared cuff and no --cuff-user: none given to the patient" if result.shared_cuff else "")
        + (f" ({result.error})" if result.error else "")
    )
    if result.clock is not None and not result.clock.trusted:
        print(f"meter clock offset {result.clock.offset_s:+.0f} s; times not trusted: {', '.join(result.clock.flags)}")
    return EXIT_OK if result.state == "done" else EXIT_ERROR


def _cmd_list(args: argparse.Namespace) -> int:
    from gateway.meters.discovery import PortWatcher
    from gateway.runtime import open_runtime
    from gateway.services import GatewayServices

    config = config_from(args)
    ports = PortWatcher(config.meters.serial.ports).scan()
    print("serial ports:")
    for port in ports.values():
        families = ", ".join(port.families) or "not a known meter cable"
        print(f"  {port.path}  {port.description or ''}  [{families}]")
    if not ports:
        print("  (none)")
    services = GatewayServices(open_runtime(config))
    try:
        meters = [d for d in services.devices() if d.kind == "meter"]
    finally:
        services.close()
    print("known meters:")
    for m in meters:
        print(f"  {m.device_id}  {m.model or m.family}  last sync {local_time(config, m.last_sync, empty='never')}")
    if not meters:
        print("  (none)")
    return EXIT_OK


def _cmd_scan(args: argparse.Namespace) -> int:
    from gateway.meters.drivers.bluetooth import scan

    config = config_from(args)
    found = asyncio.run(scan(config, timeout=args.timeout))
    for meter in found:
        print(f"{meter.address}  {meter.name or '?'}  rssi {meter.rssi}  {meter.family}")
    if not found:
        print("no Bluetooth glucose meter or blood pressure cuff in range")
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``meters list | scan | sync`` to the ``gateway`` command."""
    meters = subparsers.add_parser(
        "meters", help="glucose meters and blood pressure cuffs: list ports and meters, scan, download one"
    )
    sub = meters.add_subparsers(dest="meters_command", required=True, metavar="ACTION")

    list_ = sub.add_parser("list", help="serial ports present and meters the store knows")
    add_config_argument(list_)
    list_.set_defaults(func=_cmd_list)

    scan = sub.add_parser("scan", help="Bluetooth LE glucose meters and blood pressure cuffs in range")
    add_config_argument(scan)
    scan.add_argument(
        "--timeout", type=float, default=None, help="seconds to scan (default: meters.ble.scan_timeout_s)"
    )
    scan.set_defaults(func=_cmd_scan)

    sync = sub.add_parser("sync", help="download one meter (serial port or Bluetooth address) with a progress bar")
    add_config_argument(sync)
    sync.add_argument("target", help="serial port (/dev/meter-0, /dev/ttyUSB0) or Bluetooth address")
    sync.add_argument("--patient", default=None, metavar="ID", help="link the readings to this patient")
    sync.add_argument(
        "--cuff-user", type=int, default=None, metavar="N", help="multi-user cuff: only user N's measurements"
    )
    sync.set_defaults(func=_cmd_sync)
