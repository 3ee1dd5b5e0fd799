"""Emulated USB-serial glucose meters on real pseudo-terminals, for the tests, the bench and the demo.

One emulator per protocol family (OneTouch Ultra 2, OneTouch UltraEasy, FreeStyle Optium, TaiDoc TD-42xx)
answers the family's real protocol on the master side of an ``os.openpty`` pair; the gateway opens the slave path
with real pyserial. The meter (:class:`MeterState`: serial number, stored readings, display unit, clock
skew, faults) outlives a cable: :meth:`SerialMeterEmulator.unplug` closes the pty (pyserial then sees the
device vanish) and :meth:`~SerialMeterEmulator.replug` opens a fresh one for the same meter.

Pacing: with ``baud`` set, every byte costs its wire time (10 bits per byte at 8N1) in both directions,
so a download takes as long as it would on the real cable. Faults (:class:`Fault`): ``bad_checksum`` (one
damaged frame/line/dump), ``garbage`` (line noise before a record), ``silence`` (the meter stops
answering), ``unplug`` (the cable is pulled), ``bad_link_bits`` (UltraEasy: the meter's send bit glitches
out of step with the host's) at the k-th record sent; a clock years off is ``clock_skew``.

Each emulator follows the public record of the real meter (captures and protocol notes, cited in
``docs/meters-serial.md``), not our driver: it tolerates what real meters tolerate (parameters they do not
read, noise before a command) and answers byte for byte as the captures show.

Run as a process for the demo::

    python -m gateway.emulate.serial_meter --family onetouch_ultra2 --link /tmp/ttyMETER --records 50

prints the pty path and serves until SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import random
import select
import signal
import struct
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

from gateway.errors import ProtocolError
from gateway.meters.codec import freestyle_optium as optium
from gateway.meters.codec import lifescan_ascii as ascii_codec
from gateway.meters.codec import lifescan_binary as binary
from gateway.meters.codec import taidoc
from gateway.records import Meal, Unit

_logger = logging.getLogger(__name__)

FAMILY_NAMES = ("onetouch_ultra2", "onetouch_ultraeasy", "freestyle_optium", "taidoc_td42xx")
MARKED_FAMILIES = ("onetouch_ultra2", "taidoc_td42xx")
"""Families whose memory keeps meal marks and control-solution tests."""
MINUTE_FAMILIES = ("freestyle_optium", "taidoc_td42xx")
"""Families whose memory keeps whole minutes."""
TAIDOC_MODEL = "4277"
TAIDOC_STRIP_CODE = 0x06
"""The byte after a TaiDoc value: 0x06 in the TD-4277 notes (FORA's drivers read it as the strip code)."""
FaultKind = Literal["bad_checksum", "garbage", "silence", "unplug", "bad_link_bits"]
BITS_PER_BYTE = 10  # 8N1: start + 8 data + stop
RETRANSMIT_S = 2.0
"""How long the UltraEasy waits for the host's acknowledgement before repeating an answer. The public record
gives no figure for the meter; hosts known to work with real meters wait 0.5 s (glucometerutils) to 1 s
(Tidepool) for an answer and acknowledge at once, so a meter repeating sooner than they do would confuse
them. The emulator waits well past both."""
CHAIN_TOLERANCE_S = 0.005


@dataclass
class Fault:
    """A scripted fault at the ``at_record``-th record sent (0-based, in the order the meter sends them)."""

    kind: FaultKind
    at_record: int = 0
    times: int = 1
    """How often it fires (``silence`` lasts until the cable is replugged)."""


@dataclass
class StoredReading:
    """A reading in the emulated meter's memory (value in mg/dL, time by the meter's own clock)."""

    meter_time: datetime
    value_mg_dl: int
    meal: Meal | None = None
    control_solution: bool = False
    kind: str = "G"
    comment: str | None = None
    """Ultra 2 comment (a name of ``lifescan_ascii.COMMENT_CODES``), as the patient entered it."""
    above_range: bool = False
    """FreeStyle Optium: the meter showed HI (the dump says ``HI`` instead of a value)."""


def _default_serial(family: str, rng: random.Random) -> str:
    n = rng.randrange(10**5)
    if family == "onetouch_ultra2":
        return f"EMU{n:05d}Y"
    if family == "onetouch_ultraeasy":
        return f"UE{n:07d}"
    if family == "taidoc_td42xx":
        return f"{TAIDOC_MODEL}{n:012d}"  # 16 hex digits, as the two serial halves carry them
    return f"EMU{n % 10000:04d}-{n:05d}"


@dataclass
class MeterState:
    """The meter itself: identity, memory, clock, faults. Thread-safe enough for one pty thread + tests."""

    family: str
    serial: str = ""
    unit: Unit = Unit.MG_DL
    clock_skew: timedelta = timedelta(0)
    """Meter clock minus the true clinic-local time."""
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    readings: list[StoredReading] = field(default_factory=list)
    """Oldest first (the protocols send newest first)."""
    faults: list[Fault] = field(default_factory=list)
    firmware: str = "P02.00.00 30/08/06"
    capacity: int = 500
    """Readings the memory holds; a new one beyond this drops the oldest (as the real meters do)."""
    ignore_first_command: bool = False
    """Answer the first command after plugging in as the real meters sometimes do: the FreeStyle Optium with an
    empty line, the TaiDoc with its "entering communication mode" notice (0x54); the host repeats it."""
    seed: int = 1
    clock_frozen_at: datetime | None = None
    """When set, the meter's clock stands still at this time (replays of captured exchanges, byte for byte)."""

    def __post_init__(self) -> None:
        if self.family not in FAMILY_NAMES:
            raise ValueError(f"unknown family {self.family!r}; choose one of {', '.join(FAMILY_NAMES)}")
        if not self.serial:
            self.serial = _default_serial(self.family, random.Random(self.seed))
        self.lock = threading.Lock()

    def now(self) -> datetime:
        """The meter's clock (naive local wall time, skew included)."""
        if self.clock_frozen_at is not None:
            return self.clock_frozen_at
        ts = datetime.now(self.tz).replace(tzinfo=None) + self.clock_skew
        return ts.replace(microsecond=0)

    def set_clock(self, meter_time: datetime) -> None:
        """What the meter does on a set-clock command."""
        if self.clock_frozen_at is not None:
            self.clock_frozen_at = meter_time
        self.clock_skew = meter_time - datetime.now(self.tz).replace(tzinfo=None)

    def _stamp(self, ts: datetime) -> datetime:
        # Each family keeps the resolution its memory has.
        return ts.replace(second=0) if self.family in MINUTE_FAMILIES else ts

    def fill(self, count: int, *, interval: timedelta = timedelta(hours=5, minutes=7)) -> None:
        """Store ``count`` readings ending now, spaced ``interval`` apart, with meal and control marks."""
        rng = random.Random(self.seed)
        end = self.now()
        with self.lock:
            for i in range(count):
                ts = self._stamp(end - interval * (count - i))
                control = self.family in MARKED_FAMILIES and rng.random() < 0.02
                meals = [None, Meal.BEFORE_MEAL, Meal.AFTER_MEAL] if self.family in MARKED_FAMILIES else [None]
                meal = rng.choice(meals)
                if control and self.family == "taidoc_td42xx":
                    meal = None  # its test-type bits say control solution *or* a meal mark, never both
                self.readings.append(StoredReading(ts, rng.randrange(40, 450), meal, control))
            del self.readings[: -self.capacity]

    def add_reading(self, value_mg_dl: int, *, meter_time: datetime | None = None, meal: Meal | None = None) -> None:
        """A patient took a reading (between visits)."""
        with self.lock:
            self.readings.append(StoredReading(self._stamp(meter_time or self.now()), value_mg_dl, meal))
            del self.readings[: -self.capacity]

    def newest_first(self) -> list[StoredReading]:
        with self.lock:
            return list(reversed(self.readings))

    def fault_at(self, index: int, kind: FaultKind) -> bool:
        """True (and one firing used up) when a ``kind`` fault is due at record ``index``."""
        with self.lock:
            for fault in self.faults:
                if fault.kind == kind and fault.times > 0 and fault.at_record == index:
                    fault.times -= 1
                    return True
        return False


# -- meter-side protocol handlers (run on the emulator thread) ---------------------------------------------


FrameT_co = TypeVar("FrameT_co", covariant=True)


class _FrameSource(Protocol[FrameT_co]):
    def receive_data(self, data: bytes) -> None: ...

    def next_frame(self) -> FrameT_co | None: ...


def _frames(decoder: _FrameSource[FrameT_co], data: bytes) -> Iterator[FrameT_co]:
    """Feed ``data`` to a binary codec's decoder and yield the complete frames. A damaged request is dropped
    without an answer, as the real meters do: the host repeats it."""
    decoder.receive_data(data)
    while True:
        try:
            frame = decoder.next_frame()
        except ProtocolError:
            continue
        if frame is None:
            return
        yield frame


class _Handler:
    """Meter side of one family: ``receive`` bytes from the host, answer through ``emu.send``."""

    def __init__(self, emu: SerialMeterEmulator) -> None:
        self.emu = emu
        self.state = emu.state
        self.noise = random.Random(self.state.seed + 7)

    def receive(self, data: bytes) -> None:
        raise NotImplementedError

    def poll(self) -> None:
        """Called when the line is idle (timers)."""

    def garbage(self) -> bytes:
        return bytes(self.noise.randrange(0x80, 0x100) for _ in range(self.noise.randrange(3, 12)))

    def record_faults(self, index: int) -> bool:
        """Apply unplug/silence/garbage faults due at ``index``; False when the meter must stop."""
        if self.state.fault_at(index, "unplug"):
            self.emu.wait_delivered()  # records before this one reached the host, as on a real cable
            self.emu.unplug()
            return False
        if self.state.fault_at(index, "silence"):
            self.emu.mute = True
            return False
        if self.state.fault_at(index, "garbage"):
            self.emu.send(self.garbage())
        return True


class _Ultra2(_Handler):
    """Meter side of the Ultra 2 protocol, reading commands character by character as the real meter does.

    A real Ultra 2 answers ``DM@`` the moment the ``@`` arrives, with no CR after it and line noise before
    it (captured: ``FF FF FF 11 0D 44 4D 40`` answered ``@ "VQS2924AY" 0309``); so do ``DM?``, ``DMF``,
    ``DMP`` and ``DMSU?``. ``DMT`` carries parameters and runs at the CR that ends them. DC1 and CR start a
    new command; bytes outside printable ASCII are noise and ignored.
    """

    IMMEDIATE = frozenset(
        {
            ascii_codec.CMD_SERIAL,
            ascii_codec.CMD_VERSION,
            ascii_codec.CMD_CLOCK,
            ascii_codec.CMD_DUMP,
            ascii_codec.CMD_UNIT,
        }
    )
    MAX_COMMAND = 64

    def __init__(self, emu: SerialMeterEmulator) -> None:
        super().__init__(emu)
        self.text = ""

    def line(self, body: str) -> None:
        self.emu.send(ascii_codec.encode_line(body))

    def receive(self, data: bytes) -> None:
        for byte in data:
            if byte in (0x11, 0x0D):  # DC1 or CR: the end of a parameter command, the start of the next
                if self.text:
                    self.command(self.text)
                self.text = ""
            elif 0x20 <= byte <= 0x7E:
                self.text = (self.text + chr(byte))[-self.MAX_COMMAND :]
                if self.text in self.IMMEDIATE:
                    command, self.text = self.text, ""
                    self.command(command)

    def command(self, command: str) -> None:
        st = self.state
        if command == ascii_codec.CMD_SERIAL:
            self.line(f'@ "{st.serial}"')
        elif command == ascii_codec.CMD_VERSION:
            self.line(f"?{st.firmware}")
        elif command == ascii_codec.CMD_UNIT:
            self.line(f'SU?,"{ascii_codec.UNIT_TEXT[st.unit]}"')
        elif command == ascii_codec.CMD_CLOCK:
            self.line("F " + ascii_codec.format_datetime(st.now()))
        elif command.startswith(ascii_codec.CMD_SET_CLOCK):
            try:
                st.set_clock(datetime.strptime(command[3:], "%m/%d/%y %H:%M:%S"))
            except ValueError:
                return
            self.line("T " + ascii_codec.format_datetime(st.now()))
        elif command == ascii_codec.CMD_DUMP:
            self.dump()

    def dump(self) -> None:
        readings = self.state.newest_first()
        self.line(ascii_codec.format_header(len(readings), self.state.serial, self.state.unit))
        for index, r in enumerate(readings):
            if not self.record_faults(index):
                return
            body = ascii_codec.format_record(
                ascii_codec.DumpRecord(r.meter_time, r.value_mg_dl, r.control_solution, False, r.meal, r.comment)
            )
            raw = ascii_codec.encode_line(body)
            if self.state.fault_at(index, "bad_checksum"):
                raw = raw[:-3] + (b"0" if raw[-3:-2] != b"0" else b"1") + raw[-2:]
            self.emu.send(raw)


class _UltraEasy(_Handler):
    """Meter side of the LifeScan binary link layer, as captures of a real UltraMini show it.

    The meter keeps its own send bit and the host's last sequence bit. A disconnect (any bits) resets both
    and is acknowledged with ``ACK|DISC`` (``02 06 0C 03 06 AE``). A data frame whose S bit differs from the
    last one taken is new (the first after a disconnect always is): the meter acknowledges it with E = the
    other bit (``02 06 06 03 CD 41`` after a first request) and answers with its own S bit and the same E. A
    repeated frame (same S bit) is acknowledged again and the last answer repeated. The host's
    acknowledgement counts when its E bit toggles the meter's send bit; its S bit is not checked (hosts that
    work with real meters send either). An answer the host never acknowledges is repeated after
    ``retransmit_s`` (a few times), and dropped when the host moves on to a new request.
    """

    def __init__(self, emu: SerialMeterEmulator) -> None:
        super().__init__(emu)
        self.decoder = binary.FrameDecoder()
        self.send_seq = False  # our S bit for the next answer
        self.last_rx: bool | None = None  # S bit of the last request taken (None: none since the link opened)
        self.pending: bytes | None = None  # answer awaiting the host's ack
        self.last_response: bytes | None = None
        self.pending_index: int | None = None
        self.deadline = 0.0
        self.resends = 0

    def receive(self, data: bytes) -> None:
        for frame in _frames(self.decoder, data):
            self.on_frame(frame)

    def control(self, *, ack: bool = False) -> binary.LinkControl:
        expect = self.last_rx is not None and not self.last_rx
        return binary.control_bits(sequence=self.send_seq, expect=expect, ack=ack)

    def on_frame(self, frame: binary.Frame) -> None:
        if frame.is_disconnect:
            self.send_seq, self.last_rx = False, None
            self.pending = self.last_response = None
            self.emu.send(binary.encode_frame(b"", binary.LinkControl.ACK | binary.LinkControl.DISCONNECT))
            return
        if frame.is_ack:
            if self.pending is not None and frame.expect_receive != self.send_seq:
                self.pending = None
                self.send_seq = not self.send_seq
            return
        if self.last_rx is not None and frame.sequence == self.last_rx:  # a retransmission
            self.emu.send(binary.encode_frame(b"", self.control(ack=True)))
            if self.last_response is not None:
                self.send_response(self.last_response)
            return
        if self.pending is not None:  # the host moved on: its E bit may acknowledge the answer it got
            if frame.expect_receive != self.send_seq:
                self.send_seq = not self.send_seq
            self.pending = None
        self.last_rx = frame.sequence
        index = self.record_index(frame.message)
        if index is not None and self.state.fault_at(index, "bad_link_bits"):
            self.send_seq = not self.send_seq  # a glitch: our send bit out of step with the host's
        self.emu.send(binary.encode_frame(b"", self.control(ack=True)))
        reply = self.answer(frame.message)
        self.last_response = None
        if reply is None:
            return
        if index is not None and not self.record_faults(index):
            return
        raw = binary.encode_frame(reply, self.control())
        self.pending = self.last_response = raw
        self.pending_index = index
        self.deadline, self.resends = time.monotonic() + self.emu.retransmit_s, 0
        self.send_response(raw)

    def send_response(self, raw: bytes) -> None:
        """Send (or resend) the pending response; a due ``bad_checksum`` fault damages this copy."""
        if self.pending_index is not None and self.state.fault_at(self.pending_index, "bad_checksum"):
            raw = raw[:-1] + bytes([raw[-1] ^ 0xFF])
        self.emu.send(raw)

    @staticmethod
    def record_index(message: bytes) -> int | None:
        if message[:2] == binary.REQ_RECORD_PREFIX and len(message) == 4:
            index = int.from_bytes(message[2:4], "little")
            return None if index == binary.RECORD_COUNT_INDEX else index
        return None

    def answer(self, message: bytes) -> bytes | None:
        st = self.state
        # The meter reads a request's command bytes; parameters it does not use are not checked (LifeScan's
        # software sends the serial-number request with zeros, other hosts with 84 6A E8 73 00).
        if message[:3] == binary.REQ_SERIAL_PREFIX and len(message) == len(binary.REQ_SERIAL):
            return binary.serial_reply(st.serial)
        if message == binary.REQ_VERSION:
            return binary.version_reply(st.firmware)
        if message[:4] == binary.REQ_UNIT_PREFIX and len(message) == len(binary.REQ_UNIT):
            return binary.unit_reply(st.unit)
        if message[:2] == binary.REQ_CLOCK_PREFIX and len(message) == 7:
            if message[2] == binary.CLOCK_WRITE:
                st.set_clock(binary.decode_timestamp(int.from_bytes(message[3:7], "little")))
            return binary.clock_reply(st.now())
        if message[:2] == binary.REQ_RECORD_PREFIX and len(message) == 4:
            index = int.from_bytes(message[2:4], "little")
            readings = st.newest_first()
            if index == binary.RECORD_COUNT_INDEX:
                return binary.count_reply(len(readings))
            if index < len(readings):
                r = readings[index]
                return binary.record_reply(r.meter_time, r.value_mg_dl)
            return bytes([binary.PREFIX, 0x15])
        return None

    def poll(self) -> None:
        if self.pending is not None and time.monotonic() >= self.deadline:
            if self.resends >= 3:
                self.pending = None
                return
            self.resends += 1
            self.deadline = time.monotonic() + self.emu.retransmit_s
            self.send_response(self.pending)


class _Optium(_Handler):
    def __init__(self, emu: SerialMeterEmulator) -> None:
        super().__init__(emu)
        self.buffer = bytearray()
        self.first = emu.state.ignore_first_command

    def lines(self, lines: list[str]) -> None:
        self.emu.send("".join(line + "\r\n" for line in lines).encode("ascii"))

    def receive(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n")) >= 0:
            chunk = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            start = chunk.rfind(b"$")
            if start >= 0:
                self.command(chunk[start + 1 :].decode("ascii", errors="replace"))
        del self.buffer[:-256]

    def command(self, command: str) -> None:
        st = self.state
        if self.first:
            self.first = False
            self.emu.send(b"\r\n")
            return
        if command == optium.CMD_INFO:
            count = len(st.readings)
            info = optium.Info(serial=st.serial, version="1.22", unit=st.unit, clock=st.now(), count=count)
            self.lines(optium.format_info(info))
        elif command.startswith(optium.CMD_SET_CLOCK + ","):
            try:
                st.set_clock(datetime.strptime(command[4:], "%m,%d,%y,%H,%M"))
            except ValueError:
                return
            self.lines([optium.CMD_OK])
        elif command == optium.CMD_DUMP:
            self.dump()

    def dump(self) -> None:
        readings = self.state.newest_first()
        head = optium.dump_head(self.state.serial, "1.22", self.state.now(), len(readings))
        body = bytearray(head)
        self.emu.send(head)
        for index, r in enumerate(readings):
            if not self.record_faults(index):
                return
            line = (
                optium.format_result(optium.Result(r.meter_time, r.value_mg_dl, r.above_range, r.kind)) + "\r\n"
            ).encode()
            body += line
            if self.state.fault_at(index, "bad_checksum"):
                line = line.replace(b"  ", b" !", 1)  # damaged on the wire; the checksum covers the good one
            self.emu.send(line)
        self.emu.send(optium.dump_tail(bytes(body)))


class _TaiDoc(_Handler):
    """Meter side of the TaiDoc TD-42xx protocol (glucometer-protocols td42xx; FORA's and Tidepool's drivers).

    Fixed 8-byte frames; a damaged command (checksum, end byte) is dropped without an answer, as is a frame
    that is not a host's (direction 0xA3). Records are indexed newest first; the time and the value of a
    record are two requests. The memory keeps whole minutes, meal marks and control-solution tests.
    """

    def __init__(self, emu: SerialMeterEmulator) -> None:
        super().__init__(emu)
        self.decoder = taidoc.FrameDecoder()
        self.first = emu.state.ignore_first_command

    def receive(self, data: bytes) -> None:
        for frame in _frames(self.decoder, data):
            if frame.direction == taidoc.HOST_END:
                self.command(frame)

    def record(self, index: int) -> StoredReading | None:
        readings = self.state.newest_first()
        return readings[index] if index < len(readings) else None

    def command(self, frame: taidoc.Frame) -> None:
        st, cmd = self.state, taidoc.Command
        if self.first:
            self.first = False
            self.emu.send(taidoc.answer(cmd.COMM_MODE))
            return
        payload: bytes | None = None
        if frame.command in (cmd.CONNECT, cmd.TURN_OFF):
            payload = taidoc.EMPTY
        elif frame.command == cmd.READ_MODEL:
            payload = taidoc.model_payload(TAIDOC_MODEL)
        elif frame.command in (cmd.SERIAL_LOW, cmd.SERIAL_HIGH):
            low, high = taidoc.serial_payloads(st.serial)
            payload = low if frame.command == cmd.SERIAL_LOW else high
        elif frame.command == cmd.READ_CLOCK:
            payload = taidoc.encode_date(st.now())
        elif frame.command == cmd.WRITE_CLOCK:
            try:
                st.set_clock(taidoc.decode_date(frame.payload))
            except ProtocolError:
                return
            payload = taidoc.encode_date(st.now())
        elif frame.command == cmd.RECORD_COUNT:
            readings = st.newest_first()
            payload = taidoc.count_payload(len(readings), sum(not r.control_solution for r in readings))
        elif frame.command in (cmd.RECORD_TIME, cmd.RECORD_VALUE):
            self.record_answer(frame)
            return
        elif frame.command == cmd.CLEAR_MEMORY:
            with st.lock:
                st.readings.clear()
            payload = taidoc.EMPTY
        if payload is not None:
            self.emu.send(taidoc.answer(frame.command, payload))

    def record_answer(self, frame: taidoc.Frame) -> None:
        index = taidoc.parse_index(frame.payload)
        r = self.record(index)
        if r is None:
            self.emu.send(taidoc.answer(frame.command))
            return
        if frame.command == taidoc.Command.RECORD_TIME:
            if self.record_faults(index):
                self.emu.send(taidoc.answer(frame.command, taidoc.encode_date(r.meter_time)))
            return
        if r.control_solution:
            test_type = taidoc.TestType.CONTROL_SOLUTION
        else:
            test_type = taidoc.TYPE_OF_MEAL.get(r.meal, taidoc.TestType.GENERAL)
        raw = taidoc.answer(frame.command, taidoc.value_payload(r.value_mg_dl, test_type, code=TAIDOC_STRIP_CODE))
        if self.state.fault_at(index, "bad_checksum"):
            raw = raw[:-1] + bytes([raw[-1] ^ 0xFF])
        self.emu.send(raw)


HANDLERS: dict[str, Callable[[SerialMeterEmulator], _Handler]] = {
    "onetouch_ultra2": _Ultra2,
    "onetouch_ultraeasy": _UltraEasy,
    "freestyle_optium": _Optium,
    "taidoc_td42xx": _TaiDoc,
}


class SerialMeterEmulator:
    """A meter behind a pty. ``start()`` returns the path the gateway opens."""

    def __init__(
        self,
        state: MeterState,
        *,
        baud: int | None = None,
        link: Path | None = None,
        retransmit_s: float = RETRANSMIT_S,
    ) -> None:
        self.state = state
        self.baud = baud
        self.link = link
        self.retransmit_s = retransmit_s
        self.path: str | None = None
        self.mute = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._handler: _Handler | None = None
        self._line_free: dict[str, float] = {"rx": 0.0, "tx": 0.0}

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> str:
        """Plug the cable in: a fresh pty, a fresh protocol handler; returns the path (or the link)."""
        previous = self._thread
        if previous is not None and previous is not threading.current_thread():
            # An unplug from the emulator's own thread (a fault) only asks it to stop. Until it has, it
            # could still answer (a pending retransmission) on the new pty: wait, then plug in.
            previous.join(timeout=5)
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.path = os.ttyname(slave)
        self.mute = False
        self._stop.clear()
        self._handler = HANDLERS[self.state.family](self)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.path)
        self._thread = threading.Thread(target=self._serve, name=f"emu-{self.state.family}", daemon=True)
        self._thread.start()
        _logger.debug("emulated %s on %s", self.state.family, self.path)
        return str(self.link) if self.link is not None else self.path

    replug = start

    def wait_delivered(self, timeout: float = 2.0) -> None:
        """Wait until the host has read everything written so far (pty input queue of the slave empty)."""
        # The kernel moves pty data to the reader's queue asynchronously: an empty queue only counts once
        # it has stayed empty for a while.
        deadline = time.monotonic() + timeout
        empty_since: float | None = None
        while self._slave is not None and time.monotonic() < deadline:
            try:
                pending = struct.unpack("i", fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0"))[0]
            except OSError:
                return
            now = time.monotonic()
            if pending:
                empty_since = None
            elif empty_since is None:
                empty_since = now
            elif now - empty_since > 0.05:
                return
            time.sleep(0.002)

    def unplug(self) -> None:
        """Pull the cable: close the pty (pyserial on the other end sees the device vanish)."""
        self._stop.set()
        # Mark the cable pulled before closing: the host sees EIO the moment the master closes, and
        # whoever reacts to that must already find the emulator unplugged.
        fds = (self._master, self._slave)
        self._master = self._slave = None
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def stop(self) -> None:
        """Unplug and wait for the thread."""
        self.unplug()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def port(self) -> str:
        """The path the gateway opens: the stable link when there is one, else the pty."""
        return str(self.link) if self.link is not None else (self.path or "")

    def describe(self) -> str:
        """One line for the demo's banner (no values)."""
        st = self.state
        return f"{st.family} {st.serial} ({len(st.readings)} readings, {st.unit})"

    def __enter__(self) -> SerialMeterEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- I/O (emulator thread) -----------------------------------------------------------------------------
    def _wire(self, nbytes: int, direction: Literal["rx", "tx"]) -> None:
        """Pace ``nbytes`` at the line rate: wait until they would have finished crossing the cable.

        Deadlines are absolute per direction, so back-to-back frames do not add up ``sleep``'s overshoot,
        and the last fraction of a millisecond is waited out precisely (sleep(0) yields the GIL).
        """
        if not self.baud:
            return
        now = time.perf_counter()
        free = self._line_free[direction]
        other = self._line_free["tx" if direction == "rx" else "rx"]
        # Bytes queued within a few ms of the previous ones follow them back to back, as a UART's FIFO
        # would send them; the emulator's own scheduling jitter is not charged to the line. Not so when the
        # other direction spoke in between (a request, then its answer): the line was idle, this starts now
        # (with frames shorter than the tolerance, as TaiDoc's 8 bytes at 19200 baud, chaining across a
        # turnaround would let the emulator answer faster than the wire).
        chained = now - free < CHAIN_TOLERANCE_S and other <= free
        start = max(now, free) if not chained else free
        deadline = start + nbytes * BITS_PER_BYTE / self.baud
        self._line_free[direction] = deadline
        coarse = deadline - now - 0.0015
        if coarse > 0:
            time.sleep(coarse)
        while time.perf_counter() < deadline:
            time.sleep(0)

    def send(self, data: bytes) -> None:
        """Write to the host, paced at the line rate when ``baud`` is set. Silently stops when unplugged."""
        if self.mute:
            return
        self._wire(len(data), "tx")
        view = memoryview(data)
        while view and not self._stop.is_set():
            master = self._master
            if master is None:
                return
            try:
                _, writable, _ = select.select([], [master], [], 0.1)
                if writable:
                    n = os.write(master, view)
                    self.bytes_out += n
                    view = view[n:]
            except OSError:
                return

    def _serve(self) -> None:
        handler = self._handler
        assert handler is not None
        while not self._stop.is_set():
            master = self._master
            if master is None:
                return
            try:
                readable, _, _ = select.select([master], [], [], 0.02)
                data = os.read(master, 4096) if readable else b""
            except (OSError, ValueError):
                # EIO while no one has the slave open yet (or after close): keep waiting unless stopped.
                time.sleep(0.01)
                continue
            if data:
                self.bytes_in += len(data)
                self._wire(len(data), "rx")
                if not self.mute:
                    handler.receive(data)
            else:
                handler.poll()


def start_demo_meter(state_dir: Path, *, records: int = 30) -> SerialMeterEmulator:
    """The demo's serial meter: a OneTouch Ultra 2 in mmol/L on ``<state_dir>/ttyMETER-demo``, plugged in."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state = MeterState("onetouch_ultra2", unit=Unit.MMOL_L, clock_skew=timedelta(minutes=-7), seed=2026)
    state.fill(records)
    emu = SerialMeterEmulator(state, link=state_dir / "ttyMETER-demo")
    emu.start()
    return emu


# -- process entry point (demo) --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve one emulated meter until SIGTERM/SIGINT; print its pty path on stdout."""
    parser = argparse.ArgumentParser(prog="python -m gateway.emulate.serial_meter", description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=FAMILY_NAMES, default="onetouch_ultra2")
    parser.add_argument("--link", type=Path, default=None, help="create this symlink to the pty (stable path)")
    parser.add_argument("--records", type=int, default=50)
    parser.add_argument("--unit", choices=[u.value for u in Unit], default=Unit.MG_DL.value)
    parser.add_argument("--serial", default="")
    parser.add_argument("--skew-days", type=float, default=0.0, help="meter clock minus true time, in days")
    parser.add_argument("--baud", type=int, default=None, help="pace bytes at this line rate")
    parser.add_argument("--add-every", type=float, default=None, help="take a new reading every N seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    state = MeterState(
        args.family, serial=args.serial, unit=Unit(args.unit), clock_skew=timedelta(days=args.skew_days), seed=args.seed
    )
    state.fill(args.records)
    emu = SerialMeterEmulator(state, baud=args.baud, link=args.link)
    print(emu.start(), flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    rng = random.Random(args.seed)
    try:
        while not stopping.wait(args.add_every or 3600):
            if args.add_every:
                state.add_reading(rng.randrange(60, 300))
    except KeyboardInterrupt:
        pass
    emu.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
