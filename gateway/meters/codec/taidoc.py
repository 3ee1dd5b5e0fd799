"""TaiDoc TD-42xx serial protocol (FORA and OEM meters: GlucoRx Nexus, GlucoMen Nexus, GlucoCheck XL), pure codec.

Supports: connect, model (BCD), serial number (two halves), clock read/write, record count, and each
record's time and value with its meal / control-solution type and parameter (glucose, or another analyte
on multi-parameter meters, which the driver skips). No I/O: the driver writes :func:`encode_frame`'s
bytes and feeds what it reads to a :class:`FrameDecoder`; parse functions turn a frame into a value or
raise :class:`~gateway.errors.FrameError` / :class:`~gateway.errors.RecordError`.

Wire format (glucometer-protocols "TaiDoc TD-42xx", 19200 8N1 through a Silicon Labs CP2110 USB-HID UART
bridge; fixed 8-byte frames both ways)::

    0x51 command payload[4] direction checksum
    direction: 0xA3 host -> meter, 0xA5 meter -> host
    checksum: sum of the first seven bytes, kept to 8 bits

The meter answers with the command it was sent, except that a meter switching into communication mode
answers the first command with 0x54 (the host repeats it; Tidepool's GlucoRx driver). Connect (0x22) is
answered with 0x22, 0x24 or 0x54. Dates are ``day-word(le16) minute hour``, the day word packing
``year-2000`` (7 bits), month (4) and day (5); the minute byte's top two and the hour byte's top three bits
are flags of other meters (blood pressure on FORA D40), masked as FORA's and Tidepool's drivers do. Records
are indexed 0 = newest (le16 index in the payload's first two bytes). A record value is
``value(le16) code-low type-byte``: the type byte's bits 7-6 are the test type (0 general, 1 before meal,
2 after meal, 3 control solution), bits 5-2 the parameter (0 glucose; 6 hematocrit, 7 ketone... on
multi-parameter meters), bits 1-0 the strip code's high bits. Values are mg/dL whatever the display unit;
above 600 the meter shows HI, below 20 LO (Tidepool's GlucoRx driver). The record count answer carries the
count and a second word (0xFFFF when the memory is empty).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from gateway.errors import FrameError, RecordError
from gateway.meters.codec.framing import StartSync
from gateway.records import Meal

# -- wire constants ------------------------------------------------------------------------------------------

START = 0x51
HOST_END = 0xA3
METER_END = 0xA5
FRAME_SIZE = 8
EMPTY = bytes(4)


class Command(IntEnum):
    """Command bytes (glucometer-protocols td42xx; FORA / Tidepool GlucoRx drivers for the serial halves)."""

    CONNECT = 0x22
    READ_CLOCK = 0x23
    READ_MODEL = 0x24
    RECORD_TIME = 0x25
    RECORD_VALUE = 0x26
    SERIAL_LOW = 0x27
    """The serial number's second half (FORA: "SN later")."""
    SERIAL_HIGH = 0x28
    """The serial number's first half (FORA: "SN former")."""
    RECORD_COUNT = 0x2B
    WRITE_CLOCK = 0x33
    TURN_OFF = 0x50
    CLEAR_MEMORY = 0x52
    COMM_MODE = 0x54
    """Not a command: the meter's notice that it entered communication mode (the host repeats its command)."""


CONNECT_ANSWERS = frozenset({Command.CONNECT, Command.READ_MODEL, Command.COMM_MODE})


class TestType(IntEnum):
    """Bits 7-6 of a record value's type byte."""

    GENERAL = 0
    BEFORE_MEAL = 1
    AFTER_MEAL = 2
    CONTROL_SOLUTION = 3


MEAL_OF: dict[TestType, Meal | None] = {
    TestType.GENERAL: None,
    TestType.BEFORE_MEAL: Meal.BEFORE_MEAL,
    TestType.AFTER_MEAL: Meal.AFTER_MEAL,
    TestType.CONTROL_SOLUTION: None,
}
TYPE_OF_MEAL: dict[Meal | None, TestType] = {
    None: TestType.GENERAL,
    Meal.BEFORE_MEAL: TestType.BEFORE_MEAL,
    Meal.AFTER_MEAL: TestType.AFTER_MEAL,
}
PARAMETER_GLUCOSE = 0
PARAMETER_NAMES: dict[int, str] = {
    0: "glucose",
    6: "hematocrit",
    7: "ketone",
    8: "uric_acid",
    9: "cholesterol",
    0x0B: "hemoglobin",
    0x0C: "lactate",
    0x0D: "triglycerides",
}
HI_ABOVE_MG_DL = 600
LO_BELOW_MG_DL = 20
EMPTY_COUNT_MARK = 0xFFFF

YEAR_BASE = 2000
MINUTE_MASK = 0x3F
HOUR_MASK = 0x1F
_DATE = struct.Struct("<HBB")  # day word, minute, hour
_U16 = struct.Struct("<H")


# -- checksum and dates (module-level, tested directly) -------------------------------------------------------


def checksum(data: bytes) -> int:
    """The frame checksum: sum of the bytes, kept to 8 bits."""
    return sum(data) & 0xFF


def encode_date(ts: datetime) -> bytes:
    """A (naive, whole-minute) meter time as the 4-byte date field."""
    if not YEAR_BASE <= ts.year < YEAR_BASE + 128:
        raise RecordError(f"year {ts.year} cannot be written to a TaiDoc clock (2000-2127)")
    day_word = ((ts.year - YEAR_BASE) << 9) | (ts.month << 5) | ts.day
    return _DATE.pack(day_word, ts.minute, ts.hour)


def decode_date(payload: bytes) -> datetime:
    """The 4-byte date field -> naive datetime (whole minutes). RecordError for an impossible date."""
    day_word, minute, hour = _DATE.unpack(payload[:4])
    year, month, day = YEAR_BASE + (day_word >> 9), (day_word >> 5) & 0x0F, day_word & 0x1F
    try:
        return datetime(year, month, day, hour & HOUR_MASK, minute & MINUTE_MASK)
    except ValueError as exc:
        raise RecordError(f"TaiDoc date out of range ({exc})") from None


# -- frames -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded 8-byte frame."""

    command: int
    payload: bytes
    direction: int

    @property
    def from_meter(self) -> bool:
        return self.direction == METER_END


def encode_frame(command: int, payload: bytes = EMPTY, *, direction: int = HOST_END) -> bytes:
    """Build one frame (host to meter unless ``direction`` says otherwise)."""
    if len(payload) != 4:
        raise ValueError(f"a TaiDoc payload has 4 bytes, not {len(payload)}")
    body = bytes([START, command]) + payload + bytes([direction])
    return body + bytes([checksum(body)])


def index_payload(index: int) -> bytes:
    """The payload naming record ``index`` (0 = newest)."""
    if not 0 <= index <= 0xFFFF:
        raise RecordError(f"record index {index} out of range")
    return _U16.pack(index) + b"\x00\x00"


def record_request(command: int, index: int) -> bytes:
    """Request for record ``index`` (0 = newest): its time (:attr:`Command.RECORD_TIME`) or value."""
    return encode_frame(command, index_payload(index))


def parse_index(payload: bytes) -> int:
    """Meter side: the record index a request names."""
    (index,) = _U16.unpack_from(payload)
    return int(index)


class FrameDecoder(StartSync):
    """Finds 8-byte frames in the byte stream (sans-I/O).

    Bytes before a 0x51 are skipped. ``next_frame`` returns a Frame, None when more bytes are needed, or
    raises FrameError for a frame with a bad end byte or checksum; the bad frame's first byte is dropped
    first, so the next call resynchronises on the following 0x51.
    """

    def __init__(self) -> None:
        super().__init__(START)

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if incomplete, or FrameError for a damaged one."""
        if not self._align() or len(self._buffer) < FRAME_SIZE:
            return None
        raw = bytes(self._buffer[:FRAME_SIZE])
        if raw[6] not in (HOST_END, METER_END):
            del self._buffer[:1]
            raise FrameError(f"TaiDoc frame ends with 0x{raw[6]:02x}, not 0xa3/0xa5")
        calculated = checksum(raw[:7])
        if raw[7] != calculated:
            del self._buffer[:1]
            raise FrameError("TaiDoc frame checksum mismatch", wire=raw[7], calculated=calculated)
        del self._buffer[:FRAME_SIZE]
        return Frame(command=raw[1], payload=raw[2:6], direction=raw[6])


# -- answers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordValue:
    """One record's value field."""

    value_mg_dl: int
    test_type: TestType
    parameter: int
    """0 glucose; other analytes on multi-parameter meters (see :data:`PARAMETER_NAMES`)."""
    code: int
    """The strip code the meter stored with the result."""

    @property
    def meal(self) -> Meal | None:
        return MEAL_OF[self.test_type]

    @property
    def control_solution(self) -> bool:
        return self.test_type is TestType.CONTROL_SOLUTION


def parse_model(frame: Frame) -> str:
    """The model number (BCD, little-endian) as the meter's name, e.g. ``TD-4277``."""
    (bcd,) = _U16.unpack_from(frame.payload)
    digits = f"{bcd:04x}"
    if not digits.isdigit():
        raise RecordError(f"TaiDoc model 0x{bcd:04x} is not a BCD number")
    return f"TD-{digits}"


def parse_serial(low: Frame, high: Frame) -> str:
    """The serial number from the two halves' answers (each payload read as a little-endian hex number)."""
    return (high.payload[::-1] + low.payload[::-1]).hex().upper()


def parse_count(frame: Frame) -> int:
    """Number of records stored."""
    (count,) = _U16.unpack_from(frame.payload)
    return int(count)


def parse_value(frame: Frame) -> RecordValue:
    """One record's value, test type, parameter and strip code."""
    (value,) = _U16.unpack_from(frame.payload)
    code_low, type_byte = frame.payload[2], frame.payload[3]
    return RecordValue(
        value_mg_dl=value,
        test_type=TestType(type_byte >> 6),
        parameter=(type_byte >> 2) & 0x0F,
        code=((type_byte & 0x03) << 8) | code_low,
    )


# -- meter side (the emulator speaks through these) ----------------------------------------------------------


def answer(command: int, payload: bytes = EMPTY) -> bytes:
    """A frame from the meter."""
    return encode_frame(command, payload, direction=METER_END)


def model_payload(model_number: str) -> bytes:
    """``"4277"`` -> the BCD payload (``77 42 00 00``)."""
    return _U16.pack(int(model_number, 16)) + b"\x00\x00"


def serial_payloads(serial: str) -> tuple[bytes, bytes]:
    """The (low, high) halves' payloads of a 16-hex-digit serial number (inverse of :func:`parse_serial`)."""
    raw = bytes.fromhex(serial)
    if len(raw) != 8:
        raise ValueError(f"a TaiDoc serial number has 16 hex digits, not {len(serial)}")
    return raw[4:][::-1], raw[:4][::-1]


def count_payload(count: int, without_control: int) -> bytes:
    """The count answer: the count, then the second word (:data:`EMPTY_COUNT_MARK` for an empty memory)."""
    return _U16.pack(count) + _U16.pack(EMPTY_COUNT_MARK if count == 0 else without_control)


def value_payload(value_mg_dl: int, test_type: TestType, *, parameter: int = PARAMETER_GLUCOSE, code: int = 0) -> bytes:
    """A record's value field."""
    return _U16.pack(value_mg_dl) + bytes([code & 0xFF, (int(test_type) << 6) | (parameter << 2) | (code >> 8)])
