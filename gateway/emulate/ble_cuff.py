"""An emulated Bluetooth LE blood pressure cuff: a Blood Pressure Service peripheral on (emulated) BlueZ.

Built from the Bluetooth SIG specifications (Blood Pressure Service 1.1.1; GATT Specification Supplement 3.31
Blood Pressure Measurement, 3.32 Feature, 3.33 Blood Pressure Record, 3.133 Intermediate Cuff Pressure), not
from the gateway's codec or driver: its frames are laid out field by field below; only the IEEE 11073 number
formats (SFLOAT, Date Time) and the Record Access Control Point server (shared with the emulated glucose meter)
come from elsewhere. It registers like the emulated meter (:mod:`gateway.emulate.gatt_peripheral`).

Supports:

- services: Blood Pressure (0x1810: Measurement 0x2A35 (indicate), Intermediate Cuff Pressure 0x2A36
  (notify), Feature 0x2A49 (read); with stored records also Blood Pressure Record 0x2B36 (indicate) and the
  RACP 0x2A52), Device Information, Current Time (the cuff's clock, with a configurable skew);
- the two ways cuffs hand over their memory:

  * BLS 1.0 (``stored_records=False``, most cuffs on the market): once a bonded central subscribes to the
    Measurement, the cuff indicates every measurement that central has not confirmed yet, then ends the
    connection. A measurement counts as delivered when its indication is confirmed, so a link lost half way
    leaves the rest for the next connection;
  * BLS 1.1 (``stored_records=True``): Blood Pressure Records (sequence numbered, segmented when
    ``segment_size`` is set) reported through the RACP (report, report number, delete, abort; all, <=, >=,
    range, first, last by sequence number or user facing time);

- readings in mmHg (exponent 0, as cuffs send them) or kPa (one decimal), one or more users (user ids), pulse
  rate, measurement status bits, optionally a measurement taken while connected (Intermediate Cuff Pressure
  notifications, then the Measurement);
- bonding required (the default: cuffs usually insist): Feature reads and RACP writes from a central that has
  not paired are refused with BlueZ's "Not paired", and nothing is indicated to it;
- faults (:class:`CuffFaults`): drop the link after k measurements, a malformed frame (one byte short), slow
  sending.

Run ``python -m gateway.emulate.ble_cuff --help`` for a stand-alone cuff (the demo runs one).
"""

# No "from __future__ import annotations" here: the GATT objects' D-Bus signatures are read from annotations.
import argparse
import asyncio
import contextlib
import logging
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from zoneinfo import ZoneInfo

from dbus_fast import DBusError

from gateway.emulate.ble_meter import (
    Faults,
    TransferStats,
    start_peripheral_process,
    stats_writer,
    stop_peripheral_process,
)
from gateway.emulate.gatt_peripheral import NOT_PERMITTED, Characteristic, GattPeripheral, GattTable
from gateway.emulate.racp_server import RacpServer
from gateway.errors import DeviceError
from gateway.meters.codec import gls
from gateway.meters.codec.ieee11073 import Special, encode_date_time, encode_sfloat
from gateway.records import MMHG_PER_KPA, PressureUnit

if TYPE_CHECKING:
    from gateway.emulate.bluez_env import BluezEnv

_logger = logging.getLogger(__name__)

# Assigned numbers (Bluetooth SIG): the service, its characteristics, the appearance "Generic Blood Pressure".
BLOOD_PRESSURE_SERVICE = gls.uuid16(0x1810)
BLOOD_PRESSURE_MEASUREMENT = gls.uuid16(0x2A35)
INTERMEDIATE_CUFF_PRESSURE = gls.uuid16(0x2A36)
BLOOD_PRESSURE_FEATURE = gls.uuid16(0x2A49)
BLOOD_PRESSURE_RECORD = gls.uuid16(0x2B36)
RACP = gls.uuid16(0x2A52)
APPEARANCE_BLOOD_PRESSURE = 0x0380

# GSS 3.31 Blood Pressure Measurement flags.
FLAG_KPA, FLAG_TIME_STAMP, FLAG_PULSE_RATE, FLAG_USER_ID, FLAG_STATUS = 0x01, 0x02, 0x04, 0x08, 0x10
# GSS 3.31 Measurement Status bits (pulse rate range: 2 bits at 3, value 1 above the upper, 2 below the lower limit).
BODY_MOVEMENT, CUFF_TOO_LOOSE, IRREGULAR_PULSE, IMPROPER_POSITION = 0x0001, 0x0002, 0x0004, 0x0020
PULSE_ABOVE_RANGE, PULSE_BELOW_RANGE = 0x0008, 0x0010
# GSS 3.32 Blood Pressure Feature bits.
FEATURE_BODY_MOVEMENT, FEATURE_CUFF_FIT, FEATURE_IRREGULAR_PULSE = 0x0001, 0x0002, 0x0004
FEATURE_PULSE_RATE_RANGE, FEATURE_POSITION, FEATURE_MULTIPLE_BOND = 0x0008, 0x0010, 0x0020
# GSS 3.33 Segmentation Header: first segment, last segment, rolling counter in bits 2-7.
SEGMENT_FIRST, SEGMENT_LAST, SEGMENT_COUNTER_SHIFT = 0x01, 0x02, 2

DIS_GATT: GattTable = (
    gls.DEVICE_INFORMATION_SERVICE_UUID,
    [(uuid, ["read"]) for uuid in (gls.MODEL_NUMBER_UUID, gls.SERIAL_NUMBER_UUID, gls.FIRMWARE_REVISION_UUID,
                                   gls.MANUFACTURER_NAME_UUID)],
)  # fmt: skip
CTS_GATT: GattTable = (gls.CURRENT_TIME_SERVICE_UUID, [(gls.CURRENT_TIME_UUID, ["read", "notify"])])


# ------------------------------------------------------------------------------------------------------ readings


@dataclass(frozen=True, slots=True)
class CuffReading:
    """One measurement in the cuff's memory. Pressures in ``unit``; ``mean_arterial`` None is sent as NaN."""

    sequence: int
    time: datetime | None
    systolic: Decimal
    diastolic: Decimal
    mean_arterial: Decimal | None
    unit: PressureUnit = PressureUnit.MMHG
    pulse: int | None = None
    user_id: int | None = None
    status: int | None = None

    def user_facing_time(self) -> datetime:
        """What the RACP time filters compare (a reading without a time stamp sorts first)."""
        return self.time or datetime.min

    def frame(self) -> bytes:
        """The Blood Pressure Measurement value (GSS 3.31), fields in the specification's order."""
        exponent = -1 if self.unit is PressureUnit.KPA else 0  # kPa to 0.1, mmHg whole, as cuffs send them
        flags = FLAG_KPA if self.unit is PressureUnit.KPA else 0
        mean: Decimal | Special = Special.NAN if self.mean_arterial is None else self.mean_arterial
        body = encode_sfloat(self.systolic, exponent) + encode_sfloat(self.diastolic, exponent)
        body += encode_sfloat(mean, None if mean is Special.NAN else exponent)
        if self.time is not None:
            flags |= FLAG_TIME_STAMP
            body += encode_date_time(self.time)
        if self.pulse is not None:
            flags |= FLAG_PULSE_RATE
            body += encode_sfloat(self.pulse, 0)
        if self.user_id is not None:
            flags |= FLAG_USER_ID
            body += bytes([self.user_id])
        if self.status is not None:
            flags |= FLAG_STATUS
            body += struct.pack("<H", self.status)
        return bytes([flags]) + body


def intermediate_cuff_pressure(pressure: int, unit: PressureUnit = PressureUnit.MMHG) -> bytes:
    """An Intermediate Cuff Pressure value (GSS 3.133): the cuff pressure, diastolic and mean unused (NaN)."""
    nan = encode_sfloat(Special.NAN)
    return bytes([FLAG_KPA if unit is PressureUnit.KPA else 0]) + encode_sfloat(pressure, 0) + nan + nan


def in_kpa(mmhg: int) -> Decimal:
    """A whole mmHg value as a cuff set to kPa shows it (one decimal)."""
    return (Decimal(mmhg) / Decimal(str(MMHG_PER_KPA))).quantize(Decimal("0.1"))


def make_cuff_readings(
    count: int,
    *,
    unit: PressureUnit = PressureUnit.MMHG,
    users: Sequence[int | None] = (1,),
    first_sequence: int = 1,
    start: datetime = datetime(2026, 8, 1, 7, 45),
    interval: timedelta = timedelta(hours=12),
) -> list[CuffReading]:
    """Deterministic plausible readings, users taking turns; some with an irregular pulse (every 7th), body
    movement (every 11th) or a loose cuff (every 13th)."""
    readings = []
    for i in range(count):
        seq = first_sequence + i
        systolic, diastolic = 112 + (seq * 17) % 60, 70 + (seq * 11) % 30  # 112..171 / 70..99 mmHg
        mean = round(diastolic + (systolic - diastolic) / 3)
        status = (IRREGULAR_PULSE if seq % 7 == 0 else 0) | (BODY_MOVEMENT if seq % 11 == 0 else 0)
        status |= CUFF_TOO_LOOSE if seq % 13 == 0 else 0
        values = [in_kpa(v) if unit is PressureUnit.KPA else Decimal(v) for v in (systolic, diastolic, mean)]
        readings.append(
            CuffReading(
                sequence=seq,
                time=start + interval * i,
                systolic=values[0],
                diastolic=values[1],
                mean_arterial=values[2],
                unit=unit,
                pulse=58 + (seq * 7) % 40,
                user_id=users[i % len(users)],
                status=status,
            )
        )
    return readings


@dataclass
class CuffFaults(Faults):
    """What goes wrong with this cuff (as for the meter; "records" are its measurements). Cuffs usually require
    pairing: with ``bonding_required`` it refuses Feature reads and RACP writes, and indicates nothing, to a central
    that has not paired."""

    bonding_required: bool = True


@dataclass
class CuffProfile:
    """Identity, clock and abilities of the emulated cuff."""

    name: str = "Emu BP Cuff"
    serial: str = "CUFF-0001"
    model: str = "BPS-EMU 1"
    firmware: str = "2.1.0"
    manufacturer: str = "Clinic Gateway Emulation"
    clock_skew: timedelta = timedelta(0)
    """Cuff clock minus true local time."""
    features: int = FEATURE_BODY_MOVEMENT | FEATURE_CUFF_FIT | FEATURE_IRREGULAR_PULSE | FEATURE_MULTIPLE_BOND
    stored_records: bool = False
    """BLS 1.1 stored records through the RACP; else BLS 1.0 (measurements indicated after subscribing)."""
    segment_size: int | None = None
    """Split each Blood Pressure Record after its header into parts of this many bytes (None: one segment)."""
    intermediate_cuff_pressure: bool = True
    current_time_service: bool = True
    measure_on_connect: bool = False
    """BLS 1.0: take a measurement once connected (cuff pressure notifications, then its indication) first."""
    disconnect_when_done: bool = True
    """BLS 1.0: end the connection once everything is delivered (as most cuffs do)."""


# ---------------------------------------------------------------------------------------------------- the cuff


class EmulatedCuff(GattPeripheral):
    """A Blood Pressure Service cuff on one emulated adapter. ``async with EmulatedCuff(...) as cuff``."""

    app_interface = "org.clinicgateway.BpsApp1"

    def __init__(
        self,
        adapter_path: str = "/org/bluez/hci2",
        *,
        readings: Iterable[CuffReading] = (),
        profile: CuffProfile | None = None,
        faults: CuffFaults | None = None,
        central_adapter_path: str = "/org/bluez/hci0",
        now: Callable[[], datetime] = datetime.now,
        app_path: str = "/org/clinicgateway/bps",
        on_transfer_done: Callable[[TransferStats], None] | None = None,
    ) -> None:
        self.profile = profile or CuffProfile()
        super().__init__(
            adapter_path,
            name=self.profile.name,
            advertised_uuids=[BLOOD_PRESSURE_SERVICE],
            appearance=APPEARANCE_BLOOD_PRESSURE,
            central_adapter_path=central_adapter_path,
            app_path=app_path,
            now=now,
        )
        self.readings: list[CuffReading] = sorted(readings, key=lambda r: r.sequence)
        self.faults = faults or CuffFaults()
        self.on_transfer_done = on_transfer_done
        self.stats = TransferStats()
        self.delivered: set[int] = set()
        """BLS 1.0: sequences whose indication the central confirmed (one central: the gateway)."""
        self._segment_counter = 0
        self._classic: asyncio.Task[None] | None = None
        self.racp = RacpServer(
            records=lambda: self.readings,
            delete=self._delete,
            stream=self._stream_records,
            time_of=CuffReading.user_facing_time,
        )

    def gatt_tables(self) -> list[GattTable]:
        """Blood Pressure (with stored records when the profile says so), Device Information, Current Time."""
        p = self.profile
        chars = [(BLOOD_PRESSURE_MEASUREMENT, ["indicate"])]
        chars += [(INTERMEDIATE_CUFF_PRESSURE, ["notify"])] if p.intermediate_cuff_pressure else []
        chars += [(BLOOD_PRESSURE_FEATURE, ["read"])]
        chars += [(BLOOD_PRESSURE_RECORD, ["indicate"]), (RACP, ["write", "indicate"])] if p.stored_records else []
        return [(BLOOD_PRESSURE_SERVICE, chars), DIS_GATT] + ([CTS_GATT] if p.current_time_service else [])

    async def start(self) -> Self:
        """Register the cuff on its adapter."""
        await super().start()
        _logger.info("emulated cuff up on %s (%d readings)", self.adapter_path, len(self.readings))
        return self

    async def stop(self) -> None:
        """Stop a transfer, then leave the bus."""
        await self.racp.stop()
        if self._classic is not None:
            self._classic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._classic
        await super().stop()

    # -- readings -------------------------------------------------------------------------------------------
    def add_readings(self, count: int, **kwargs: Any) -> list[CuffReading]:
        """Store ``count`` new measurements (as if taken since the last visit), continuing the sequence."""
        last = self.readings[-1] if self.readings else None
        kwargs.setdefault("unit", last.unit if last else PressureUnit.MMHG)
        if last is not None and last.time is not None:
            kwargs.setdefault("start", last.time + timedelta(hours=12))
        new = make_cuff_readings(count, first_sequence=last.sequence + 1 if last else 1, **kwargs)
        self.readings.extend(new)
        return new

    def cuff_now(self) -> datetime:
        """The cuff's clock: local time plus the configured skew."""
        return self.now() + self.profile.clock_skew

    def _delete(self, sequences: set[int]) -> None:
        self.readings = [r for r in self.readings if r.sequence not in sequences]

    def _frame(self, reading: CuffReading) -> bytes:
        frame = reading.frame()
        return frame[:-1] if reading.sequence in self.faults.malformed_sequences else frame

    async def drop_link(self) -> None:
        """Lose the link, noting how far the transfer got."""
        self.log.append(("drop_link", self.stats.records_sent))
        await super().drop_link()

    # -- GATT callbacks -------------------------------------------------------------------------------------
    async def on_read(self, char: Characteristic, options: dict[str, Any]) -> bytes:
        self.log.append(("read", char.uuid))
        p = self.profile
        if char.uuid == BLOOD_PRESSURE_FEATURE:
            if self.faults.bonding_required:
                await self.require_bond(options)
            return struct.pack("<H", p.features)
        strings = {
            gls.MODEL_NUMBER_UUID: p.model,
            gls.SERIAL_NUMBER_UUID: p.serial,
            gls.FIRMWARE_REVISION_UUID: p.firmware,
            gls.MANUFACTURER_NAME_UUID: p.manufacturer,
        }
        if char.uuid in strings:
            return strings[char.uuid].encode()
        if char.uuid == gls.CURRENT_TIME_UUID:
            now = self.cuff_now()  # Current Time: Date Time, day of week (1 = Monday), fractions256, adjust reason
            return encode_date_time(now) + bytes([now.isoweekday(), now.microsecond * 256 // 1_000_000, 0])
        raise DBusError(NOT_PERMITTED, "Read not permitted")

    async def on_write(self, char: Characteristic, value: bytes, options: dict[str, Any]) -> None:
        if char.uuid != RACP:
            raise DBusError(NOT_PERMITTED, "Write not permitted")
        if self.faults.bonding_required:
            await self.require_bond(options)
        self.log.append(("racp", value))
        if await self.racp.write(char, value):
            self.stats.aborted = True

    def on_start_notify(self, char: Characteristic) -> None:
        # BLS 1.0: a central subscribing to the Measurement gets what it has not confirmed yet.
        idle = self._classic is None or self._classic.done()
        if char.uuid == BLOOD_PRESSURE_MEASUREMENT and not self.profile.stored_records and idle:
            self._classic = asyncio.get_running_loop().create_task(self._deliver_unsent(char))

    def on_stop_notify(self, char: Characteristic) -> None:
        # The central unsubscribed, or (bluezoo reconnect fix) the link went down: the cuff stops sending.
        if char.uuid in (BLOOD_PRESSURE_MEASUREMENT, BLOOD_PRESSURE_RECORD, RACP):
            stopped = self.racp.cancel()
            if self._classic is not None and not self._classic.done():
                self._classic.cancel()
                stopped = True
            if stopped:
                self.stats.aborted = True
                self.log.append(("transfer_aborted", self.stats.records_sent))

    # -- BLS 1.0: indicate what the central has not confirmed yet ---------------------------------------------
    async def _deliver_unsent(self, measurement: Characteristic) -> None:
        await asyncio.sleep(0)  # let the StartNotify call return first, as a cuff answers the CCCD write
        if self.faults.bonding_required and not await self.central_paired():
            self.log.append(("refused_unpaired", "indications"))
            return
        if self.profile.measure_on_connect:
            await self._measure_now(measurement)
        self.stats = TransferStats(started=time.perf_counter())
        try:
            for reading in [r for r in self.readings if r.sequence not in self.delivered]:
                if not await measurement.send(self._frame(reading)):
                    return  # not confirmed: the central went; the rest waits for the next connection
                self.delivered.add(reading.sequence)
                if await self._after_one():
                    return
            self.stats.finished = time.perf_counter()
            if self.on_transfer_done is not None:
                self.on_transfer_done(self.stats)
            if self.profile.disconnect_when_done:
                self.log.append(("done_disconnect", self.stats.records_sent))
                await super().drop_link()
        except asyncio.CancelledError:
            self.log.append(("stream_cancelled", self.stats.records_sent))

    async def _measure_now(self, measurement: Characteristic) -> None:
        """A measurement while connected: the cuff inflates (pressure notifications), then the result."""
        icp = self.chars.get(INTERMEDIATE_CUFF_PRESSURE)
        for pressure in (180, 150, 120):
            if icp is not None and icp.notifying:
                await icp.send(intermediate_cuff_pressure(pressure))
        (reading,) = self.add_readings(1, start=self.cuff_now().replace(microsecond=0))
        self.log.append(("measured", reading.sequence))

    async def _after_one(self) -> bool:
        """Count a measurement sent and apply the faults; True when the link was dropped."""
        self.stats.records_sent += 1
        if self.faults.drop_link_after is not None and self.stats.records_sent >= self.faults.drop_link_after:
            self.faults.drop_link_after = None  # once
            await self.drop_link()
            return True
        if self.faults.delay_s:
            await asyncio.sleep(self.faults.delay_s)
        return False

    # -- BLS 1.1: Blood Pressure Records through the RACP -----------------------------------------------------
    def record_segments(self, reading: CuffReading) -> list[bytes]:
        """The Blood Pressure Record notifications of a reading (GSS 3.33): Segmentation Header, then parts of
        sequence number + UUID of the Blood Pressure Measurement + its value."""
        body = struct.pack("<HH", reading.sequence & 0xFFFF, 0x2A35) + self._frame(reading)
        size = self.profile.segment_size or len(body)
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        segments = []
        for index, part in enumerate(parts):
            header = (SEGMENT_FIRST if index == 0 else 0) | (SEGMENT_LAST if index == len(parts) - 1 else 0)
            header |= (self._segment_counter % 64) << SEGMENT_COUNTER_SHIFT
            self._segment_counter += 1
            segments.append(bytes([header]) + part)
        return segments

    async def _stream_records(self, selected: list[CuffReading]) -> None:
        record, racp = self.chars[BLOOD_PRESSURE_RECORD], self.chars[RACP]
        self.stats = TransferStats(started=time.perf_counter())
        try:
            for reading in selected:
                for segment in self.record_segments(reading):
                    await record.send(segment)
                if await self._after_one():
                    return
            await self.racp.respond(racp, gls.RacpOpCode.REPORT_RECORDS, gls.RacpResponseCode.SUCCESS)
            self.stats.finished = time.perf_counter()
            if self.on_transfer_done is not None:
                self.on_transfer_done(self.stats)
        except asyncio.CancelledError:
            self.log.append(("stream_cancelled", self.stats.records_sent))


# -------------------------------------------------------------------------------------------------- command line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.emulate.ble_cuff", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", default="/org/bluez/hci2", help="D-Bus path of the cuff's adapter")
    parser.add_argument("--central-adapter", default="/org/bluez/hci0", help="the gateway's adapter (for drops)")
    parser.add_argument("--count", type=int, default=6, help="readings stored (0: none)")
    parser.add_argument("--unit", choices=[u.value for u in PressureUnit], default=PressureUnit.MMHG.value)
    parser.add_argument("--users", default="1", help="comma-separated user ids taking turns (e.g. 1,2)")
    parser.add_argument("--serial", default="CUFF-0001")
    parser.add_argument("--name", default="Emu BP Cuff")
    parser.add_argument("--stored-records", action="store_true", help="BLS 1.1 records through the RACP")
    parser.add_argument("--segment-size", type=int, default=None)
    parser.add_argument("--skew-s", type=float, default=0.0, help="cuff clock minus true time, seconds")
    parser.add_argument("--no-bonding", action="store_true", help="do not require pairing")
    parser.add_argument("--add-every-s", type=float, default=0.0, help="take a new reading every N seconds")
    parser.add_argument("--timezone", default=None, help="the cuff's local time zone (default: the system's)")
    parser.add_argument("--stats-file", type=Path, default=None, help="append one JSON line per finished transfer")
    return parser.parse_args(argv)


async def run_cuff(args: argparse.Namespace) -> None:
    """Run one cuff until cancelled (stand-alone emulator for the demo and the benchmark)."""
    unit = PressureUnit(args.unit)
    zone = ZoneInfo(args.timezone) if args.timezone else None
    users = [int(u) for u in args.users.split(",") if u.strip()] or [1]

    def local_now() -> datetime:
        return datetime.now(zone).replace(tzinfo=None)

    start = local_now().replace(microsecond=0) - timedelta(hours=12) * args.count
    cuff = EmulatedCuff(
        args.adapter,
        readings=make_cuff_readings(args.count, unit=unit, users=users, start=start),
        profile=CuffProfile(name=args.name, serial=args.serial, clock_skew=timedelta(seconds=args.skew_s),
                            stored_records=args.stored_records, segment_size=args.segment_size),
        faults=CuffFaults(bonding_required=not args.no_bonding),
        central_adapter_path=args.central_adapter,
        now=local_now,
        on_transfer_done=None if args.stats_file is None else stats_writer(args.stats_file),
    )  # fmt: skip
    async with cuff:
        print(f"cuff {args.serial} up on {args.adapter} at {cuff.address}", flush=True)
        while True:
            if args.add_every_s > 0:
                await asyncio.sleep(args.add_every_s)
                cuff.add_readings(1, users=users, start=cuff.cuff_now().replace(microsecond=0))
            else:
                await asyncio.sleep(3600)


@dataclass
class DemoCuff:
    """The demo's emulated cuff process (on the demo's emulated BlueZ)."""

    process: "subprocess.Popen[str]"
    serial: str
    address: str

    def describe(self) -> str:
        return f"{self.serial} at {self.address}"

    def stop(self) -> None:
        """Stop the cuff process by its PID."""
        stop_peripheral_process(self.process)


def start_cuff_process(
    env: "BluezEnv", adapter_index: int, log: Path, *args: str, serial: str = "CUFF-DEMO-1", timeout_s: float = 15.0
) -> DemoCuff:
    """Start ``python -m gateway.emulate.ble_cuff`` on adapter ``hci<adapter_index>`` of ``env`` and wait until
    it is registered. Raises DeviceError when it does not come up (its stderr is in ``log``)."""
    try:
        proc, address = start_peripheral_process(
            env,
            "gateway.emulate.ble_cuff",
            adapter_index,
            log,
            ["--serial", serial, *args],
            ready="cuff ",
            timeout_s=timeout_s,
        )
    except DeviceError:
        raise DeviceError(f"emulated cuff did not start (see {log})") from None
    return DemoCuff(proc, serial, address=address)


def start_demo_cuff(env: "BluezEnv", state_dir: Path, *, timezone: str = "Asia/Shanghai") -> DemoCuff:
    """The demo's cuff on ``hci2``: a two-user home cuff in mmHg with 6 readings, one more every 3 minutes."""
    return start_cuff_process(
        env, 2, state_dir / "ble-cuff.log", "--count", "6", "--users", "1,2", "--add-every-s", "180",
        "--timezone", timezone,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m gateway.emulate.ble_cuff``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_cuff(_parse_args(argv)))


if __name__ == "__main__":
    main()


__all__ = [
    "CuffFaults",
    "CuffProfile",
    "CuffReading",
    "EmulatedCuff",
    "make_cuff_readings",
    "start_cuff_process",
    "start_demo_cuff",
]
