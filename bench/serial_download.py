"""Benchmark: download 500 records from each serial family's emulator, paced at its line rate on a real pty.

The gateway's time (one DownloadSession: identify, clock, count, every record, store writes) is compared
with the theoretical wire time of the bytes exchanged in both directions (10 bits per byte at 8N1), the
floor any implementation on that cable has. Target: ratio <= 1.05. Then the next visit on the same store, with
one reading taken since: ``revisit_s`` and ``revisit_bytes`` (a newest-first meter stops at what it has).

    .venv/bin/python bench/serial_download.py [--records 500] [--baud N] [--family NAME ...] [--repeat N]

Each family runs at its own meter's rate (9600 baud for the LifeScan meters, 19200 for the FreeStyle Optium
and the TaiDoc TD-42xx) unless ``--baud`` sets one for all. ``held`` is what the emulated meter holds.

Prints one line per family, then one JSON object on the last line (``ratio`` is the worst family's). On a
loaded machine use ``--repeat 3``: each family's best run is reported, with every run's ratio alongside.

``turnaround_ms`` is the gateway's own share of each exchange: the median time from reading a meter's answer
to writing the next frame. The rest of ``gateway_s - wire_s`` is the emulator's processing and the wake-ups of
both ends of the pty, which weigh most on protocols of many short exchanges (TaiDoc: 8-byte frames, two
exchanges per record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.clock import SystemClock
from gateway.emulate.serial_meter import BITS_PER_BYTE, FAMILY_NAMES, MeterState, SerialMeterEmulator
from gateway.meters.drivers import FAMILIES
from gateway.meters.session import DownloadSession
from gateway.meters.transport.serial import SerialPort
from gateway.store import open_store
from gateway.store.db import Origin

TZ = ZoneInfo("Asia/Shanghai")


class Turnarounds:
    """Times from the end of a read to the next write on the gateway's serial ports (bench instrumentation)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._last_read: float | None = None
        self._read = SerialPort.read_some
        self._write = SerialPort.write

    def __enter__(self) -> Turnarounds:
        outer = self

        async def read_some(port: SerialPort, timeout: float) -> bytes:
            data = await outer._read(port, timeout)
            if data:
                outer._last_read = time.perf_counter()
            return data

        async def write(port: SerialPort, data: bytes) -> None:
            if outer._last_read is not None:
                outer.samples.append(time.perf_counter() - outer._last_read)
                outer._last_read = None
            await outer._write(port, data)

        SerialPort.read_some = read_some  # type: ignore[method-assign, assignment]
        SerialPort.write = write  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        SerialPort.read_some = self._read  # type: ignore[method-assign, assignment]
        SerialPort.write = self._write  # type: ignore[method-assign, assignment]

    def median_ms(self) -> float:
        return round(statistics.median(self.samples) * 1000, 3) if self.samples else 0.0


async def _download(family: str, port: str, state_dir: Path) -> tuple[float, int]:
    clock = SystemClock("assume_synced")
    store = open_store(state_dir / "gateway.db", state_dir / "images", clock=clock, origin=Origin("bench", "gw"))
    try:
        started = time.perf_counter()
        driver = await FAMILIES[family].open(port)
        result = await DownloadSession(store, clock, driver, tz=TZ, max_clock_skew=timedelta(days=365)).run()
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    if result.state != "done":
        raise SystemExit(f"{family}: download {result.state}: {result.error}")
    return elapsed, result.added + result.qc_added  # records stored: readings and control-solution (QC) results


def bench_family(family: str, records: int, baud: int) -> dict[str, Any]:
    """One family: paced emulator, one download, gateway time vs wire time."""
    state = MeterState(family, tz=TZ, seed=7)
    state.fill(records)
    held = len(state.readings)
    emu = SerialMeterEmulator(state, baud=baud)
    port = emu.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            with Turnarounds() as turnarounds:
                elapsed, added = asyncio.run(_download(family, port, Path(tmp)))
            wire_bytes = emu.bytes_in + emu.bytes_out
            # the next visit: one reading taken at home since, same store
            state.add_reading(123, meter_time=state.now() + timedelta(minutes=1))
            revisit_s, revisit_added = asyncio.run(_download(family, port, Path(tmp)))
            revisit_bytes = emu.bytes_in + emu.bytes_out - wire_bytes
    finally:
        emu.stop()
    wire_s = wire_bytes * BITS_PER_BYTE / baud
    return {
        "baud": baud,
        "records": added,
        "held": held,
        "bytes": wire_bytes,
        "wire_s": round(wire_s, 3),
        "gateway_s": round(elapsed, 3),
        "ratio": round(elapsed / wire_s, 4),
        "turnaround_ms": turnarounds.median_ms(),
        "revisit_added": revisit_added,
        "revisit_bytes": revisit_bytes,
        "revisit_s": round(revisit_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--baud", type=int, default=None, help="line rate for every family (default: each meter's)")
    parser.add_argument("--family", action="append", choices=FAMILY_NAMES, default=None)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per family; the best is reported (noise only adds time)"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for family in args.family or FAMILY_NAMES:
        baud = args.baud or FAMILIES[family].line.baudrate
        runs = [bench_family(family, args.records, baud) for _ in range(max(1, args.repeat))]
        r = results[family] = min(runs, key=lambda run: run["ratio"])
        r["all_ratios"] = [run["ratio"] for run in runs]
        print(
            f"{family:20s} {r['records']}/{r['held']} records, {r['bytes']} bytes at {baud}: wire {r['wire_s']:.2f} s, "
            f"gateway {r['gateway_s']:.2f} s, ratio {r['ratio']:.3f} (gateway turnaround {r['turnaround_ms']} ms); "
            f"next visit (1 new): {r['revisit_s']:.2f} s",
            flush=True,
        )
    summary = {
        "bench": "serial_download",
        "records": args.records,
        "baud": args.baud or "per family",
        "target": 1.05,
        "families": results,
        "ratio": max(r["ratio"] for r in results.values()),
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
