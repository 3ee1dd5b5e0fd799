"""LifeScan OneTouch Ultra 2 serial protocol (ASCII commands), pure codec.

Supports: reading the serial number (``DM@``), firmware version (``DM?``), display unit (``DMSU?``), the
meter clock (``DMF``), setting the clock (``DMT``) and the record dump (``DMP``), with the protocol's
16-bit sum checksum on every response line. No I/O here: the driver writes :func:`encode_command`'s bytes
and feeds whatever it reads to a :class:`LineDecoder`; parse functions turn one line into a value or raise
:class:`~gateway.errors.FrameError` (framing, checksum) / :class:`~gateway.errors.RecordError` (content).

Wire format (LifeScan's published Ultra 2 protocol, as also documented by glucometerutils ``otultra2``):

- a command is ``DC1 CR <text> CR`` (``\\x11\\rDMF\\r``); the meter ignores anything else;
- a response line is ``<body> SP <4 hex digits> CR LF``, the hex digits being the 16-bit sum of the
  body's bytes;
- the dump is a header line ``P nnn,"<serial>","MG/DL "`` followed by ``nnn`` record lines, newest first::

      P "WED","11/23/26","09:41:48   ","C 123?","B","03", 00

  ``C`` marks a control-solution test, ``?`` a parity error in the meter's memory, ``N``/``B``/``A`` the
  meal marker and the two digits a comment code. Values are always mg/dL on the wire, whatever the
  display unit. The meter keeps no record numbers: records are identified by (time, value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from gateway.errors import FrameError, RecordError
from gateway.records import Meal, Unit

# -- wire constants -------------------------------------------------------------------------------

COMMAND_PREFIX = b"\x11\r"  # DC1 CR: wakes the meter's command parser
COMMAND_SUFFIX = b"\r"
LINE_END = b"\r\n"
MAX_LINE = 256
"""No valid response line is longer; a longer run of bytes without CR LF is garbage."""

CMD_VERSION = "DM?"
CMD_SERIAL = "DM@"
CMD_CLOCK = "DMF"
CMD_SET_CLOCK = "DMT"
CMD_UNIT = "DMSU?"
CMD_DUMP = "DMP"

ULTRA2_SERIAL_SUFFIX = "Y"
"""LifeScan's specification: an Ultra 2 serial number ends in ``Y``."""

UNIT_CODES: dict[str, Unit] = {"MG/DL ": Unit.MG_DL, "MMOL/L": Unit.MMOL_L}
UNIT_TEXT: dict[Unit, str] = {unit: text for text, unit in UNIT_CODES.items()}

MEAL_CODES: dict[str, Meal | None] = {"N": None, "B": Meal.BEFORE_MEAL, "A": Meal.AFTER_MEAL}
MEAL_TEXT: dict[Meal | None, str] = {meal: code for code, meal in MEAL_CODES.items()}

COMMENT_CODES: dict[str, str | None] = {
    "00": None,
    "01": "not_enough_food",
    "02": "too_much_food",
    "03": "mild_exercise",
    "04": "hard_exercise",
    "05": "medication",
    "06": "stress",
    "07": "illness",
    "08": "feel_hypo",
    "09": "menses",
    "10": "vacation",
    "11": "other",
}

WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")

FLAG_PARITY_ERROR = "meter_memory_parity_error"
"""The meter marked the record with ``?``: its memory failed a parity check. Kept, but flagged."""

_RESPONSE_RE = re.compile(rb"^(?P<body>[\x20-\x7e]+) (?P<checksum>[0-9A-F]{4})\r\n$")
_DATETIME_RE = re.compile(
    r'^"(?P<dow>[A-Z]{3})","(?P<month>\d{2})/(?P<day>\d{2})/(?P<year>\d{2})",'
    r'"(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})   "$'
)
_SERIAL_RE = re.compile(r'^@ "(?P<serial>[A-Z0-9]{9})"$')
_UNIT_RE = re.compile(r'^SU\?,"(?P<unit>MG/DL |MMOL/L)"$')
_HEADER_RE = re.compile(r'^P (?P<count>\d{3}),"(?P<serial>[A-Z0-9]{9})","(?P<unit>MG/DL |MMOL/L)"$')
_RECORD_RE = re.compile(
    r'^P (?P<datetime>"[A-Z]{3}","[0-9/]{8}","[0-9:]{8}   "),'
    r'"(?P<control>[C ]) (?P<value>\d{3})(?P<parity>[? ])",'
    r'"(?P<meal>[NBA])","(?P<comment>\d{2})", 00$'
)


# -- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DumpHeader:
    """First line of a ``DMP`` dump."""

    count: int
    serial: str
    unit: Unit


@dataclass(frozen=True, slots=True)
class DumpRecord:
    """One record line of a ``DMP`` dump (value in mg/dL)."""

    meter_time: datetime
    value_mg_dl: int
    control_solution: bool
    parity_error: bool
    meal: Meal | None
    comment: str | None


# -- checksum and dates (module-level, tested directly) --------------------------------------------


def checksum(body: bytes) -> int:
    """The Ultra 2 checksum: the sum of the bytes, modulo 2**16."""
    return sum(body) & 0xFFFF


def parse_datetime(text: str) -> datetime:
    """``"THU","11/23/26","09:41:48   "`` -> naive datetime (years 2000-2099, as the meter counts)."""
    match = _DATETIME_RE.match(text)
    if match is None:
        raise RecordError(f"Ultra 2 date/time field not understood ({len(text)} characters)")
    try:
        return datetime(
            2000 + int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"]),
        )
    except ValueError as exc:
        raise RecordError(f"Ultra 2 date/time out of range ({exc})") from None


def format_datetime(ts: datetime) -> str:
    """The meter's quoted date/time form (inverse of :func:`parse_datetime`)."""
    return f'"{WEEKDAYS[ts.weekday()]}","{ts:%m/%d/%y}","{ts:%H:%M:%S}   "'


# -- framing ----------------------------------------------------------------------------------------


def encode_command(command: str) -> bytes:
    """Bytes the host writes for ``command`` (e.g. ``"DMF"``, ``"DMT11/23/26 09:41:48"``)."""
    return COMMAND_PREFIX + command.encode("ascii") + COMMAND_SUFFIX


def set_clock_command(ts: datetime) -> str:
    """The ``DMT`` command text that sets the meter clock to ``ts``."""
    return f"{CMD_SET_CLOCK}{ts:%m/%d/%y %H:%M:%S}"


def encode_line(body: str) -> bytes:
    """A response line as the meter sends it (used by the emulator and the tests)."""
    raw = body.encode("ascii")
    return raw + f" {checksum(raw):04X}".encode("ascii") + LINE_END


def decode_line(line: bytes) -> str:
    """Check one response line's checksum; return its body. Raises FrameError."""
    match = _RESPONSE_RE.match(line)
    if match is None:
        raise FrameError(f"Ultra 2 response line of {len(line)} bytes is malformed or lacks its checksum")
    body = match["body"]
    wire = int(match["checksum"], 16)
    calculated = checksum(body)
    if wire != calculated:
        raise FrameError("Ultra 2 response line checksum mismatch", wire=wire, calculated=calculated)
    return body.decode("ascii")


class LineDecoder:
    """Splits the byte stream into CR LF terminated lines (sans-I/O).

    ``receive_data`` buffers bytes; ``next_line`` returns one complete raw line or None when more data
    is needed. A run longer than :data:`MAX_LINE` without a line end is dropped with a FrameError, so
    garbage on the line cannot grow the buffer without bound.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the port."""
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line (with its CR LF), or None if none is complete yet."""
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                dropped = len(self._buffer)
                self._buffer.clear()
                raise FrameError(f"Ultra 2: {dropped} bytes without a line end, dropped")
            return None
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    def clear(self) -> None:
        """Forget buffered bytes (after a command is retried)."""
        self._buffer.clear()


# -- responses --------------------------------------------------------------------------------------


def parse_version(body: str) -> str:
    """``DM?`` response body (``?P02.00.00 30/08/06``) -> firmware version."""
    if not body.startswith("?") or len(body) < 2:
        raise RecordError("Ultra 2 version response not understood")
    return body[1:]


def parse_serial(body: str) -> str:
    """``DM@`` response body (``@ "123456789Y"``) -> serial number (9 characters ending in Y)."""
    match = _SERIAL_RE.match(body)
    if match is None:
        raise RecordError("Ultra 2 serial number response not understood")
    serial = match["serial"]
    if not serial.endswith(ULTRA2_SERIAL_SUFFIX):
        raise RecordError(f"serial number {serial!r} is not a OneTouch Ultra 2's (it must end in Y)")
    return serial


def parse_clock(body: str) -> datetime:
    """``DMF``/``DMT`` response body (``F "THU","11/23/26","09:41:48   "``) -> meter time."""
    if len(body) < 3 or body[0] not in "FT" or body[1] != " ":
        raise RecordError("Ultra 2 clock response not understood")
    return parse_datetime(body[2:])


def parse_unit(body: str) -> Unit:
    """``DMSU?`` response body (``SU?,"MMOL/L"``) -> display unit."""
    match = _UNIT_RE.match(body)
    if match is None:
        raise RecordError("Ultra 2 unit response not understood")
    return UNIT_CODES[match["unit"]]


def parse_header(body: str) -> DumpHeader:
    """First ``DMP`` line -> record count, serial number and display unit."""
    match = _HEADER_RE.match(body)
    if match is None:
        raise RecordError("Ultra 2 dump header not understood")
    return DumpHeader(count=int(match["count"]), serial=match["serial"], unit=UNIT_CODES[match["unit"]])


def parse_record(body: str) -> DumpRecord:
    """One ``DMP`` record line body -> record. Raises RecordError for anything unexpected."""
    match = _RECORD_RE.match(body)
    if match is None:
        raise RecordError(f"Ultra 2 record line of {len(body)} characters not understood")
    comment_code = match["comment"]
    if comment_code not in COMMENT_CODES:
        raise RecordError(f"Ultra 2 record has an unknown comment code {comment_code!r}")
    return DumpRecord(
        meter_time=parse_datetime(match["datetime"]),
        value_mg_dl=int(match["value"]),
        control_solution=match["control"] == "C",
        parity_error=match["parity"] == "?",
        meal=MEAL_CODES[match["meal"]],
        comment=COMMENT_CODES[comment_code],
    )


# -- meter side (the emulator speaks the same format through these) -----------------------------------


def format_header(count: int, serial: str, unit: Unit) -> str:
    """Body of a dump header line."""
    return f'P {count:03d},"{serial}","{UNIT_TEXT[unit]}"'


def format_record(record: DumpRecord) -> str:
    """Body of a dump record line."""
    control = "C" if record.control_solution else " "
    parity = "?" if record.parity_error else " "
    comment = next((code for code, name in COMMENT_CODES.items() if name == record.comment), "00")
    return (
        f'P {format_datetime(record.meter_time)},"{control} {record.value_mg_dl:03d}{parity}",'
        f'"{MEAL_TEXT[record.meal]}","{comment}", 00'
    )
