"""An emulated Bluetooth LE glucose meter: a GLS peripheral registered on (emulated) BlueZ over D-Bus.

The meter is a BlueZ GATT *server* application (org.bluez.GattManager1 + LEAdvertisingManager1, written with
dbus-fast). Registered on an adapter of the emulated BlueZ (``bluez_env.BluezEnv``), it lets the gateway's
unmodified bleak code scan, connect, pair, read, subscribe and run RACP against it. It speaks the wire format
through the project's own codec (``gateway.meters.codec.gls``), so what it sends is what the spec says.

Supports:

- services: Glucose (0x1808: Measurement, Context, Feature, RACP), Device Information (model, serial,
  firmware, manufacturer), Current Time (0x2A2B, the meter's clock with a configurable skew);
- records: any count, mg/dL (sent in kg/L) or mmol/L (sent in mol/L), contexts (meal, tester, carbohydrate...)
  on chosen records, new records added between visits (:meth:`EmulatedGlucoseMeter.add_records`);
- RACP: report / report-number / delete / abort with all, <=, >=, range, first, last by sequence number or
  user facing time, and the spec's response codes for everything else;
- faults (:class:`Faults`): drop the link after record k, slow sending, a malformed measurement frame,
  bonding required (GLS reads and writes refused with BlueZ's "Not paired" until the central pairs), and no
  records.

Notifications are paced on bluezoo's Confirm() call: an unpaced burst of hundreds of signals fills the
socket and dbus-fast drops the bus. Run ``python -m gateway.emulate.ble_meter --help`` for a stand-alone meter.
"""

# No "from __future__ import annotations" here: dbus-fast reads the D-Bus signatures from the annotations, and a
# postponed "-> None" would reach it as the string "None".
import argparse
import asyncio
import contextlib
import json
import logging
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from zoneinfo import ZoneInfo

from dbus_fast import DBusError

from gateway.emulate.gatt_peripheral import NOT_PERMITTED, Characteristic, GattPeripheral, GattTable
from gateway.emulate.racp_server import RacpServer
from gateway.errors import DeviceError
from gateway.meters.codec import gls
from gateway.records import Unit

if TYPE_CHECKING:
    from gateway.emulate.bluez_env import BluezEnv

_logger = logging.getLogger(__name__)

# GATT table of the emulated meter.
GLS_GATT: GattTable = (
    gls.GLUCOSE_SERVICE_UUID,
    [
        (gls.GLUCOSE_MEASUREMENT_UUID, ["notify"]),
        (gls.GLUCOSE_CONTEXT_UUID, ["notify"]),
        (gls.GLUCOSE_FEATURE_UUID, ["read"]),
        (gls.RACP_UUID, ["write", "indicate"]),
    ],
)
DIS_GATT: GattTable = (
    gls.DEVICE_INFORMATION_SERVICE_UUID,
    [
        (gls.MODEL_NUMBER_UUID, ["read"]),
        (gls.SERIAL_NUMBER_UUID, ["read"]),
        (gls.FIRMWARE_REVISION_UUID, ["read"]),
        (gls.MANUFACTURER_NAME_UUID, ["read"]),
    ],
)
CTS_GATT: GattTable = (gls.CURRENT_TIME_SERVICE_UUID, [(gls.CURRENT_TIME_UUID, ["read", "notify"])])


# ------------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class EmuRecord:
    """One record stored in the emulated meter."""

    sequence: int
    time: datetime
    value: Decimal
    """In ``unit``: mg/dL (whole numbers) or mmol/L (one decimal)."""
    unit: Unit = Unit.MG_DL
    sample_type: gls.SampleType = gls.SampleType.CAPILLARY_PLASMA
    sample_location: gls.SampleLocation = gls.SampleLocation.FINGER
    time_offset_min: int | None = None
    sensor_status: gls.SensorStatus | None = None
    meal: gls.MealCode | None = None
    tester: gls.Tester | None = None
    carbohydrate_g: int | None = None

    def user_facing_time(self) -> datetime:
        """Base time plus time offset: what the RACP time filters compare."""
        return self.time + timedelta(minutes=self.time_offset_min or 0)

    @property
    def has_context(self) -> bool:
        return self.meal is not None or self.tester is not None or self.carbohydrate_g is not None

    def measurement(self) -> gls.GlucoseMeasurement:
        if self.unit is Unit.MG_DL:
            concentration, unit = self.value.scaleb(-5), gls.ConcentrationUnit.KG_PER_L  # 1 mg/dL = 1e-5 kg/L
        else:
            concentration, unit = self.value.scaleb(-3), gls.ConcentrationUnit.MOL_PER_L
        return gls.GlucoseMeasurement(
            flags=gls.MeasurementFlags.CONTEXT_FOLLOWS if self.has_context else 0,
            sequence=self.sequence,
            base_time=self.time,
            time_offset_min=self.time_offset_min,
            concentration=concentration,
            unit=unit,
            sample_type=self.sample_type,
            sample_location=self.sample_location,
            sensor_status=self.sensor_status,
        )

    def context(self) -> gls.GlucoseContext | None:
        if not self.has_context:
            return None
        return gls.GlucoseContext(
            flags=0,
            sequence=self.sequence,
            meal=self.meal,
            tester=self.tester,
            carbohydrate_id=None if self.carbohydrate_g is None else gls.CarbohydrateId.BREAKFAST,
            carbohydrate_kg=None if self.carbohydrate_g is None else Decimal(self.carbohydrate_g).scaleb(-3),
        )


_MEALS = (gls.MealCode.PREPRANDIAL, gls.MealCode.POSTPRANDIAL, gls.MealCode.FASTING, gls.MealCode.BEDTIME)


def make_records(
    count: int,
    *,
    unit: Unit = Unit.MG_DL,
    first_sequence: int = 1,
    start: datetime = datetime(2026, 8, 1, 7, 30),
    interval: timedelta = timedelta(hours=6),
    context_every: int = 3,
) -> list[EmuRecord]:
    """Deterministic plausible records; every ``context_every``-th one (0: none) carries a meal context."""
    records = []
    for i in range(count):
        seq = first_sequence + i
        mg_dl = 80 + (seq * 37) % 190  # 80..269 mg/dL, varied
        value = Decimal(mg_dl) if unit is Unit.MG_DL else (Decimal(mg_dl) / Decimal("18.016")).quantize(Decimal("0.1"))
        with_context = context_every > 0 and seq % context_every == 0
        records.append(
            EmuRecord(
                sequence=seq,
                time=start + interval * i,
                value=value,
                unit=unit,
                meal=_MEALS[seq % len(_MEALS)] if with_context else None,
                tester=gls.Tester.SELF if with_context else None,
            )
        )
    return records


@dataclass
class Faults:
    """What goes wrong with this meter."""

    drop_link_after: int | None = None
    """Drop the link once, after this many records of a transfer were sent."""
    delay_s: float = 0.0
    """Pause between records (a slow meter)."""
    malformed_sequences: frozenset[int] = frozenset()
    """Send these records' measurement frames one byte short."""
    bonding_required: bool = False
    """Refuse GLS reads and RACP writes from a central that has not paired."""


@dataclass
class MeterProfile:
    """Identity and clock of the emulated meter."""

    name: str = "Emu Glucose Meter"
    serial: str = "EMU-0001"
    model: str = "GLS-EMU 1"
    firmware: str = "1.0.2"
    manufacturer: str = "Clinic Gateway Emulation"
    clock_skew: timedelta = timedelta(0)
    """Meter clock minus true local time."""
    features: gls.GlucoseFeature = (
        gls.GlucoseFeature.LOW_BATTERY_DETECTION
        | gls.GlucoseFeature.SENSOR_MALFUNCTION_DETECTION
        | gls.GlucoseFeature.MULTIPLE_BOND
    )
    current_time_service: bool = True


@dataclass
class TransferStats:
    """What the meter did in its last RACP report (the benchmark's baseline)."""

    records_sent: int = 0
    started: float | None = None
    finished: float | None = None
    aborted: bool = False

    @property
    def elapsed_s(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


# ------------------------------------------------------------------------------------------------- the meter


class EmulatedGlucoseMeter(GattPeripheral):
    """A GLS meter on one emulated adapter. ``await start()`` registers it; ``await stop()`` removes it."""

    app_interface = "org.clinicgateway.GlsApp1"

    def __init__(
        self,
        adapter_path: str = "/org/bluez/hci1",
        *,
        records: Iterable[EmuRecord] = (),
        profile: MeterProfile | None = None,
        faults: Faults | None = None,
        central_adapter_path: str = "/org/bluez/hci0",
        now: Callable[[], datetime] = datetime.now,
        app_path: str = "/org/clinicgateway/gls",
        on_transfer_done: Callable[[TransferStats], None] | None = None,
    ) -> None:
        self.profile = profile or MeterProfile()
        super().__init__(
            adapter_path,
            name=self.profile.name,
            advertised_uuids=[gls.GLUCOSE_SERVICE_UUID],
            appearance=gls.GLUCOSE_METER_APPEARANCE,
            central_adapter_path=central_adapter_path,
            app_path=app_path,
            now=now,
        )
        self.records: list[EmuRecord] = sorted(records, key=lambda r: r.sequence)
        self.faults = faults or Faults()
        self.on_transfer_done = on_transfer_done
        self.stats = TransferStats()
        self.racp = RacpServer(
            records=lambda: self.records, delete=self._delete, stream=self._stream, time_of=EmuRecord.user_facing_time
        )

    # -- lifecycle ----------------------------------------------------------------------------------------
    def gatt_tables(self) -> list[GattTable]:
        """Glucose, Device Information and (unless the profile says not) Current Time."""
        return [GLS_GATT, DIS_GATT] + ([CTS_GATT] if self.profile.current_time_service else [])

    async def start(self) -> Self:
        """Register the meter on its adapter."""
        await super().start()
        _logger.info("emulated meter up on %s (%d records)", self.adapter_path, len(self.records))
        return self

    async def stop(self) -> None:
        """Stop a transfer, then leave the bus."""
        await self.racp.stop()
        await super().stop()

    # -- records ------------------------------------------------------------------------------------------
    def add_records(self, count: int, **kwargs: Any) -> list[EmuRecord]:
        """Store ``count`` new measurements (as if taken since the last visit), continuing the sequence."""
        last = self.records[-1] if self.records else None
        first = last.sequence + 1 if last else 1
        unit = kwargs.pop("unit", last.unit if last else Unit.MG_DL)
        start = kwargs.pop("start", (last.time + timedelta(hours=6)) if last else datetime(2026, 8, 1, 7, 30))
        new = make_records(count, unit=unit, first_sequence=first, start=start, **kwargs)
        self.records.extend(new)
        return new

    def meter_now(self) -> datetime:
        """The meter's clock: local time plus the configured skew."""
        return self.now() + self.profile.clock_skew

    async def drop_link(self) -> None:
        """Lose the link (see :meth:`GattPeripheral.drop_link`), noting how far the transfer got."""
        self.log.append(("drop_link", self.stats.records_sent))
        await super().drop_link()

    async def _check_bonded(self, options: dict[str, Any]) -> None:
        if self.faults.bonding_required:
            await self.require_bond(options)

    # -- GATT callbacks -----------------------------------------------------------------------------------
    async def on_read(self, char: Characteristic, options: dict[str, Any]) -> bytes:
        self.log.append(("read", char.uuid))
        p = self.profile
        if char.uuid in (gls.GLUCOSE_FEATURE_UUID,):
            await self._check_bonded(options)
            return struct.pack("<H", int(p.features))
        strings = {
            gls.MODEL_NUMBER_UUID: p.model,
            gls.SERIAL_NUMBER_UUID: p.serial,
            gls.FIRMWARE_REVISION_UUID: p.firmware,
            gls.MANUFACTURER_NAME_UUID: p.manufacturer,
        }
        if char.uuid in strings:
            return strings[char.uuid].encode()
        if char.uuid == gls.CURRENT_TIME_UUID:
            return gls.encode_current_time(self.meter_now())
        raise DBusError(NOT_PERMITTED, "Read not permitted")

    def on_stop_notify(self, char: Characteristic) -> None:
        # The central unsubscribed, or (bluezoo reconnect fix) the link went down: a meter aborts its procedure.
        if char.uuid in (gls.GLUCOSE_MEASUREMENT_UUID, gls.RACP_UUID) and self.racp.cancel():
            self.stats.aborted = True
            self.log.append(("transfer_aborted", self.stats.records_sent))

    async def on_write(self, char: Characteristic, value: bytes, options: dict[str, Any]) -> None:
        if char.uuid != gls.RACP_UUID:
            raise DBusError(NOT_PERMITTED, "Write not permitted")
        await self._check_bonded(options)
        self.log.append(("racp", value))
        if await self.racp.write(char, value):
            self.stats.aborted = True

    def _delete(self, sequences: set[int]) -> None:
        self.records = [r for r in self.records if r.sequence not in sequences]

    async def _stream(self, records: list[EmuRecord]) -> None:
        measurement, context = self.chars[gls.GLUCOSE_MEASUREMENT_UUID], self.chars[gls.GLUCOSE_CONTEXT_UUID]
        self.stats = TransferStats(started=time.perf_counter())
        try:
            for record in records:
                frame = gls.encode_measurement(record.measurement())
                if record.sequence in self.faults.malformed_sequences:
                    frame = frame[:-1]
                await measurement.send(frame)
                ctx = record.context()
                if ctx is not None:
                    await context.send(gls.encode_context(ctx))
                self.stats.records_sent += 1
                if self.faults.drop_link_after is not None and self.stats.records_sent >= self.faults.drop_link_after:
                    self.faults.drop_link_after = None  # once
                    await self.drop_link()
                    return
                if self.faults.delay_s:
                    await asyncio.sleep(self.faults.delay_s)
            await self._respond(gls.RacpOpCode.REPORT_RECORDS, gls.RacpResponseCode.SUCCESS)
            self.stats.finished = time.perf_counter()
            if self.on_transfer_done is not None:
                self.on_transfer_done(self.stats)
        except asyncio.CancelledError:
            self.log.append(("stream_cancelled", self.stats.records_sent))

    async def _respond(self, request: int, code: gls.RacpResponseCode) -> None:
        await self.racp.respond(self.chars[gls.RACP_UUID], request, code)


# -------------------------------------------------------------------------------------------------- command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.emulate.ble_meter", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", default="/org/bluez/hci1", help="D-Bus path of the meter's adapter")
    parser.add_argument("--central-adapter", default="/org/bluez/hci0", help="the gateway's adapter (for drops)")
    parser.add_argument("--count", type=int, default=20, help="records stored (0: no records)")
    parser.add_argument("--unit", choices=[u.value for u in Unit], default=Unit.MG_DL.value)
    parser.add_argument("--serial", default="EMU-0001")
    parser.add_argument("--name", default="Emu Glucose Meter")
    parser.add_argument("--skew-s", type=float, default=0.0, help="meter clock minus true time, seconds")
    parser.add_argument("--context-every", type=int, default=3)
    parser.add_argument("--drop-after", type=int, default=None, help="drop the link once after N records")
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--malformed", type=int, action="append", default=[], help="sequence to send malformed")
    parser.add_argument("--bonding-required", action="store_true")
    parser.add_argument("--add-every-s", type=float, default=0.0, help="take a new reading every N seconds")
    parser.add_argument("--timezone", default=None, help="the meter's local time zone (default: the system's)")
    parser.add_argument("--stats-file", type=Path, default=None, help="append one JSON line per finished report")
    return parser.parse_args(argv)


def stats_writer(path: Path) -> Callable[[TransferStats], None]:
    """A transfer callback appending one JSON line per finished transfer to ``path`` (the benchmark reads it)."""

    def write(stats: TransferStats) -> None:
        line = {"records_sent": stats.records_sent, "elapsed_s": stats.elapsed_s}
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    return write


async def run_meter(args: argparse.Namespace) -> None:
    """Run one meter until cancelled (stand-alone emulator for the demo)."""
    unit = Unit(args.unit)
    zone = ZoneInfo(args.timezone) if args.timezone else None

    def local_now() -> datetime:
        return datetime.now(zone).replace(tzinfo=None)

    start = local_now().replace(microsecond=0) - timedelta(hours=6) * args.count
    meter = EmulatedGlucoseMeter(
        args.adapter,
        records=make_records(args.count, unit=unit, start=start, context_every=args.context_every),
        profile=MeterProfile(name=args.name, serial=args.serial, clock_skew=timedelta(seconds=args.skew_s)),
        faults=Faults(
            drop_link_after=args.drop_after,
            delay_s=args.delay_s,
            malformed_sequences=frozenset(args.malformed),
            bonding_required=args.bonding_required,
        ),
        central_adapter_path=args.central_adapter,
        now=local_now,
        on_transfer_done=None if args.stats_file is None else stats_writer(args.stats_file),
    )
    async with meter:
        print(f"meter {args.serial} up on {args.adapter} at {meter.address}", flush=True)
        while True:
            if args.add_every_s > 0:
                await asyncio.sleep(args.add_every_s)
                meter.add_records(1, unit=unit, start=meter.meter_now().replace(microsecond=0))
            else:
                await asyncio.sleep(3600)


@dataclass
class DemoBle:
    """The demo's emulated BlueZ with one meter process on it (``gateway demo``)."""

    env: "BluezEnv"
    meter: "subprocess.Popen[str]"
    serial: str
    count: int
    unit: Unit
    address: str
    gateway_adapter: str = "hci0"

    @property
    def bus_address(self) -> str:
        assert self.env.address is not None
        return self.env.address

    def describe(self) -> str:
        return f"{self.serial} ({self.count} records in {self.unit.value}) at {self.address}"

    def stop(self) -> None:
        """Stop the meter process, then the emulated BlueZ, by PID."""
        stop_peripheral_process(self.meter)
        self.env.stop()


def start_demo_ble(
    state_dir: Path,
    *,
    count: int = 30,
    unit: Unit = Unit.MMOL_L,
    add_every_s: float = 120.0,
    timezone: str = "Asia/Shanghai",
) -> DemoBle:
    """Start an emulated BlueZ (gateway on hci0, hci2 left for a cuff) and one GLS meter process on hci1 that takes
    a new reading every
    ``add_every_s`` seconds, its clock on ``timezone`` local time (the clinic's, like a real meter's).
    Raises DeviceError (or OSError) when dbus-daemon or bluezoo cannot run."""
    from gateway.emulate.bluez_env import BluezEnv

    env = BluezEnv(adapters=3, set_environ=False).start()  # hci2: the demo's blood pressure cuff
    serial = "EMU-DEMO-1"
    log = state_dir / "ble-meter.log"
    args = ["--count", str(count), "--unit", unit.value, "--serial", serial, "--add-every-s", str(add_every_s),
            "--timezone", timezone]  # fmt: skip
    try:
        proc, address = start_peripheral_process(env, "gateway.emulate.ble_meter", 1, log, args, ready="meter ")
    except DeviceError:
        env.stop()
        raise DeviceError(f"emulated BLE meter did not start (see {log})") from None
    return DemoBle(env, proc, serial, count, unit, address=address)


def start_peripheral_process(
    env: "BluezEnv", module: str, adapter_index: int, log: Path, args: Sequence[str], *, ready: str,
    timeout_s: float = 15.0,
) -> tuple["subprocess.Popen[str]", str]:  # fmt: skip
    """Start ``python -m <module>`` (an emulated peripheral) on adapter ``hci<adapter_index>`` of ``env`` and wait
    for its first line, ``<ready><address>``: the process and its Bluetooth address. Raises DeviceError (after
    stopping it) when it does not come up within ``timeout_s``; its stderr goes to ``log``."""
    cmd = [sys.executable, "-m", module, "--adapter", env.adapter_path(adapter_index), *args]
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            cmd,
            env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=env.address or ""),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    assert proc.stdout is not None
    up = select.select([proc.stdout], [], [], timeout_s)[0]
    line = proc.stdout.readline().strip() if up else ""
    if not line.startswith(ready):
        stop_peripheral_process(proc)
        raise DeviceError(f"{module} did not start (see {log})")
    return proc, line.rsplit(" ", 1)[-1]


def stop_peripheral_process(proc: "subprocess.Popen[str]") -> None:
    """Stop an emulated peripheral's process by its PID (terminate, then kill after 5 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m gateway.emulate.ble_meter``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_meter(_parse_args(argv)))


if __name__ == "__main__":
    main()
