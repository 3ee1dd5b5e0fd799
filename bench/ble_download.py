"""Benchmark: records from an emulated BLE glucose meter (1,000) or blood pressure cuff (200) through real bleak
into the store.

Compares the gateway's time for the report (from writing the RACP "report records" request, or subscribing to
a BLS 1.0 cuff's Measurement, until the last record is in the store) with the emulated device's own time to send
them (first notification until its final RACP response, or its last confirmed indication). Both are measured in
the same run, on the same emulated BlueZ; the device runs in its own process. Target: ratio <= 1.05.

    .venv/bin/python bench/ble_download.py [--records 1000] [--rounds 3]
    .venv/bin/python bench/ble_download.py --device cuff [--cuff-kind stored|classic] [--records 200]

The last line is one JSON object with ``ratio`` (median over the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.clock import FakeClock
from gateway.config import parse_config
from gateway.emulate.bluez_env import BluezEnv
from gateway.meters.drivers.bluetooth import BleDriver, open_driver
from gateway.meters.session import DownloadSession
from gateway.records import CuffRecord, MeterRecord
from gateway.store import open_store


class TimedDriver:
    """Wraps the real driver; times ``records()`` from its first write to its end, or (``until_last``: a BLS 1.0
    cuff, whose end is its disconnect) to its last record taken by the session."""

    def __init__(self, driver: BleDriver, *, until_last: bool = False) -> None:
        self.driver = driver
        self.until_last = until_last
        self.started: float | None = None
        self.finished: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord | CuffRecord]:
        self.started = time.perf_counter()
        async for record in self.driver.records(since_sequence):
            yield record
            if self.until_last:
                self.finished = time.perf_counter()  # the session has taken it (batched into the store below)
        if not self.until_last:
            self.finished = time.perf_counter()


EMULATORS = {
    "meter": ["gateway.emulate.ble_meter"],
    "cuff": ["gateway.emulate.ble_cuff", "--no-bonding"],
}
"""The emulator module (and its options) per device; the cuff does not insist on bonding here so that both
cases time the same thing (the bonding round is the connection's, before the report)."""


async def one_round(
    count: int, workdir: Path, round_no: int, bus_address: str, device: str = "meter", cuff_kind: str = "stored"
) -> dict[str, float]:
    """One download of ``count`` records from a meter or cuff running in its own process (so that the gateway's
    work cannot slow the device down and hide in its baseline)."""
    config = parse_config({"gateway": {"site_id": "bench", "gateway_id": "gw"}, "meters": {"ble": {"enabled": True}}})
    clock = FakeClock(datetime(2026, 11, 23, 2, 0, tzinfo=UTC))
    store = open_store(workdir / f"bench-{round_no}.db", workdir / "images", clock=clock)
    stats_file = workdir / f"meter-{round_no}.jsonl"
    module, *options = EMULATORS[device]
    if device == "cuff" and cuff_kind == "stored":
        options.append("--stored-records")
    meter = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *options, "--adapter", "/org/bluez/hci1", "--count", str(count),
        "--serial", f"BENCH-{round_no}", "--stats-file", str(stats_file),
        env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus_address), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert meter.stdout is not None
        line = (await asyncio.wait_for(meter.stdout.readline(), 15)).decode()
        address = line.strip().rsplit(" ", 1)[-1]
        driver = TimedDriver(await open_driver(address, config), until_last=device == "cuff" and cuff_kind == "classic")
        result = await DownloadSession(store, clock, driver, tz=ZoneInfo("Asia/Shanghai")).run()  # type: ignore[arg-type]
        for _ in range(100):  # the meter writes its figure right after its final RACP response
            if stats_file.exists() and stats_file.read_text():
                break
            await asyncio.sleep(0.02)
    finally:
        meter.terminate()
        await meter.wait()
        store.close()
    if result.added != count or driver.started is None or driver.finished is None:
        raise SystemExit(f"round {round_no}: stored {result.added} of {count} ({result.state}: {result.error})")
    emulator_s = float(json.loads(stats_file.read_text().splitlines()[-1])["elapsed_s"])
    gateway_s = driver.finished - driver.started
    return {"gateway_s": gateway_s, "emulator_s": emulator_s, "ratio": gateway_s / emulator_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=sorted(EMULATORS), default="meter")
    parser.add_argument(
        "--cuff-kind",
        choices=["stored", "classic"],
        default="stored",
        help="cuff: BLS 1.1 stored records via the RACP, or BLS 1.0 indications after connecting",
    )
    parser.add_argument("--records", type=int, default=None, help="default: 1000 (meter), 200 (cuff)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.records = args.records or (200 if args.device == "cuff" else 1000)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp, BluezEnv(adapters=2) as env:
        assert env.address is not None
        for i in range(args.rounds):
            r = asyncio.run(one_round(args.records, Path(tmp), i, env.address, args.device, args.cuff_kind))
            rounds.append(r)
            print(f"round {i}: gateway {r['gateway_s']:.3f} s, emulator {r['emulator_s']:.3f} s", end=", ")
            print(f"ratio {r['ratio']:.4f}")
    ratio = statistics.median(r["ratio"] for r in rounds)
    print(
        json.dumps(
            {
                "benchmark": "ble_download",
                "device": args.device if args.device == "meter" else f"cuff ({args.cuff_kind})",
                "records": args.records,
                "rounds": args.rounds,
                "gateway_s": round(statistics.median(r["gateway_s"] for r in rounds), 4),
                "emulator_s": round(statistics.median(r["emulator_s"] for r in rounds), 4),
                "records_per_s": round(args.records / statistics.median(r["gateway_s"] for r in rounds), 1),
                "ratio": round(ratio, 4),
                "target": 1.05,
            }
        )
    )


if __name__ == "__main__":
    main()
