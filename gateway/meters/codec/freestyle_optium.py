"""Abbott FreeStyle Optium serial protocol (text), pure codec.

Supports: ``$colq`` (serial number, firmware version, display unit, meter clock, number of results),
``$xmem`` (the memory dump, verified by its checksum before any result is used) and ``$tim`` (set the
clock, whole minutes). No I/O: the driver writes :func:`encode_command`'s bytes and feeds what it reads
to a :class:`ResponseDecoder`, which returns a complete response (a list of lines) once its end marker
arrived; parse functions then turn it into values or raise FrameError / RecordError.

Wire format (glucometer-protocols "FreeStyle Optium", 19200 8N1, XON/XOFF):

- a command is ``$<name>[,params] CR LF``; the meter may ignore the first command after the cable is
  plugged in and answer with an empty line: the protocol's retry is to send it again;
- ``$colq`` answers ``S/N:\\t<serial>``, ``Ver:\\t<version>\\t<unit>``, ``Clock:\\t<Mon>  <dd> <yyyy>\\t<hh:mm:ss>``,
  ``Market:``, ``ROM:``, ``Usage:\\t<n>`` lines, then ``CMD OK``;
- ``$xmem`` answers an empty line, serial, version, ``<Mon_> <dd> <yyyy> <hh:mm:ss>``, a 3-digit count,
  one line per result ``<vvv|HI >  <Mon_> <dd> <yyyy> <hh:mm> <G|K> 0x00`` and ``0x<hhhh>  END``, where
  the checksum is the sum of every byte before ``0x`` (line ends included), kept to 16 bits. Months are
  three letters and a space, except ``June`` and ``July``.

Glucose values are mg/dL on the wire whatever the display unit; ``HI`` means above the strip's range
(kept as 500 mg/dL, flagged). ``K`` results are beta-ketone tests and are not glucose: they are skipped.
The meter numbers no records: records are identified by (time, value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from gateway.errors import FrameError, RecordError
from gateway.records import Unit

# -- wire constants --------------------------------------------------------------------------------------

LINE_END = b"\r\n"
CMD_INFO = "colq"
CMD_DUMP = "xmem"
CMD_SET_CLOCK = "tim"
CMD_OK = "CMD OK"
DUMP_END = "END"
MAX_LINE = 128
MAX_RESPONSE_LINES = 1200
"""A dump holds at most a few hundred results; more lines means the stream is not an Optium's."""

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTH_NUMBERS: dict[str, int] = {name: number for number, name in enumerate(MONTHS, start=1)}
LONG_MONTHS: dict[int, str] = {6: "June", 7: "July"}
"""The dump spells these two in full; every other month is three letters and a space."""

UNIT_CODES: dict[str, Unit] = {"MMOL": Unit.MMOL_L, "MGDL": Unit.MG_DL}
"""Display unit in the ``Ver:`` line. Only ``MMOL`` is documented; ``MGDL`` is our emulator's spelling
and any other word is read as mg/dL (the unit the results are in anyway)."""
UNIT_TEXT: dict[Unit, str] = {unit: text for text, unit in UNIT_CODES.items()}

HI_VALUE_MG_DL = 500
"""The Optium's upper glucose limit; a ``HI`` result is kept at this value and flagged."""
GLUCOSE, KETONE = "G", "K"

_SERIAL_RE = re.compile(r"^[A-Z0-9]{7}-[A-Z0-9]{5}$")
_CLOCK_RE = re.compile(r"^(?P<month>[A-Z][a-z]{2})  (?P<day>\d{2}) (?P<year>\d{4})\t(?P<time>\d{2}:\d{2}:\d{2})$")
_DUMP_DATE_RE = re.compile(
    r"^(?P<month>[A-Z][a-z]{2})[ ey] (?P<day>\d{2}) (?P<year>\d{4}) (?P<time>\d{2}:\d{2}(?::\d{2})?)$"
)
_RESULT_RE = re.compile(
    r"^(?P<value>HI |\d{3})  (?P<date>[A-Z][a-z]{2}[ ey] \d{2} \d{4} \d{2}:\d{2}) (?P<type>[GK]) 0x00$"
)
_CHECKSUM_RE = re.compile(r"^0x(?P<checksum>[0-9A-F]{4})  END$")


# -- values ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Info:
    """What ``$colq`` says."""

    serial: str
    version: str
    unit: Unit
    clock: datetime
    count: int


@dataclass(frozen=True, slots=True)
class Result:
    """One result of the dump (glucose in mg/dL)."""

    meter_time: datetime
    value_mg_dl: int
    above_range: bool
    kind: str
    """``G`` glucose or ``K`` beta-ketone."""


@dataclass(frozen=True, slots=True)
class Dump:
    """A verified ``$xmem`` dump."""

    serial: str
    version: str
    clock: datetime
    results: tuple[Result, ...]


# -- checksum and dates (module-level, tested directly) -----------------------------------------------------


def checksum(data: bytes) -> int:
    """The dump checksum: the sum of the bytes, kept to 16 bits."""
    return sum(data) & 0xFFFF


def _month(name: str) -> int:
    month = MONTH_NUMBERS.get(name)
    if month is None:
        raise RecordError(f"Optium month name {name!r} unknown")
    return month


def _build(year: int, month: int, day: int, hms: str) -> datetime:
    hour, minute, second = (int(p) for p in (hms + ":00")[:8].split(":"))
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise RecordError(f"Optium date out of range ({exc})") from None


def parse_clock(text: str) -> datetime:
    """``Nov  23 2026\\t09:41:48`` (the ``Clock:`` line of ``$colq``) -> naive datetime."""
    match = _CLOCK_RE.match(text)
    if match is None:
        raise RecordError(f"Optium clock field not understood ({len(text)} characters)")
    return _build(int(match["year"]), _month(match["month"]), int(match["day"]), match["time"])


def parse_dump_date(text: str) -> datetime:
    """``June 03 2026 09:41[:48]`` (dump form, seconds optional) -> naive datetime."""
    match = _DUMP_DATE_RE.match(text)
    if match is None:
        raise RecordError(f"Optium date field not understood ({len(text)} characters)")
    return _build(int(match["year"]), _month(match["month"]), int(match["day"]), match["time"])


def format_clock(ts: datetime) -> str:
    """Inverse of :func:`parse_clock`."""
    return f"{MONTHS[ts.month - 1]}  {ts:%d %Y}\t{ts:%H:%M:%S}"


def format_dump_date(ts: datetime, *, seconds: bool) -> str:
    """Inverse of :func:`parse_dump_date`."""
    month = LONG_MONTHS.get(ts.month, MONTHS[ts.month - 1] + " ")
    return f"{month} {ts:%d %Y %H:%M}" + (f":{ts:%S}" if seconds else "")


# -- framing ----------------------------------------------------------------------------------------------


def encode_command(command: str) -> bytes:
    """Bytes the host writes for ``command`` (without the ``$``)."""
    return b"$" + command.encode("ascii") + LINE_END


def set_clock_command(ts: datetime) -> str:
    """``$tim`` parameters for ``ts`` (minutes; the meter keeps no seconds when set)."""
    return f"{CMD_SET_CLOCK},{ts:%m,%d,%y,%H,%M}"


class ResponseDecoder:
    """Collects one response (sans-I/O): lines up to ``CMD OK`` or the dump's ``END`` line.

    ``next_response`` returns the raw bytes and the decoded lines of a complete response, or None while
    more bytes are needed. A lone empty line before anything else is the meter ignoring the first
    command: it is returned as an empty response so the driver can retry, as the protocol says.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._pos = 0  # bytes of the buffer already split into ``_lines`` (no rescans of a long dump)

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the port."""
        self._buffer += data

    def clear(self) -> None:
        """Forget buffered bytes (before a retry)."""
        self._buffer.clear()
        self._lines, self._pos = [], 0

    def _consume(self, pos: int) -> bytes:
        raw = bytes(self._buffer[:pos])
        del self._buffer[:pos]
        self._lines, self._pos = [], 0
        return raw

    def next_response(self, *, dump: bool) -> tuple[bytes, list[str]] | None:
        """A complete response: (raw bytes, lines without CR LF), or None if incomplete."""
        lines = self._lines
        while True:
            end = self._buffer.find(LINE_END, self._pos)
            if end < 0:
                if len(self._buffer) - self._pos > MAX_LINE:
                    self.clear()
                    raise FrameError("Optium: a line without CR LF is longer than any valid line; dropped")
                return None
            raw_line = bytes(self._buffer[self._pos : end])
            self._pos = end + len(LINE_END)
            # Line noise is kept (as U+FFFD) rather than raised here: the response is read to its end
            # marker, so a retry starts on a quiet line, and its checksum or parse then fails clearly.
            line = raw_line.decode("ascii", errors="replace")
            if len(line) > MAX_LINE or len(lines) > MAX_RESPONSE_LINES:
                self._consume(self._pos)
                raise FrameError("Optium: response longer than any valid response; dropped")
            lines.append(line)
            done = (line.endswith(f"  {DUMP_END}") and dump) or (line == CMD_OK and not dump)
            ignored = not dump and lines == [""]
            if done or ignored:
                raw = self._consume(self._pos)
                return raw, ([] if ignored else lines)


# -- responses ---------------------------------------------------------------------------------------------


def parse_info(lines: list[str]) -> Info:
    """``$colq`` response lines -> Info."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        key, _, rest = line.partition("\t")
        fields[key] = rest.split("\t") if rest else []
    if lines[-1:] != [CMD_OK]:
        raise RecordError("Optium $colq response does not end with CMD OK")
    try:
        serial = fields["S/N:"][0]
        version, unit_text = fields["Ver:"][0], fields["Ver:"][1]
        clock = parse_clock("\t".join(fields["Clock:"]))
        count = int(fields["Usage:"][0])
    except (KeyError, IndexError, ValueError):
        raise RecordError("Optium $colq response lacks S/N, Ver, Clock or Usage") from None
    if not _SERIAL_RE.match(serial):
        raise RecordError(f"Optium serial number {serial!r} is not in the XXXXXXX-XXXXX form")
    return Info(serial=serial, version=version, unit=UNIT_CODES.get(unit_text, Unit.MG_DL), clock=clock, count=count)


def verify_dump(raw: bytes, lines: list[str]) -> None:
    """Check the dump's checksum over every byte before the ``0x`` of its last line."""
    match = _CHECKSUM_RE.match(lines[-1]) if lines else None
    if match is None:
        raise FrameError("Optium $xmem dump does not end with a checksum line")
    body = raw[: raw.rfind(b"0x")]
    wire, calculated = int(match["checksum"], 16), checksum(body)
    if wire != calculated:
        raise FrameError("Optium $xmem dump checksum mismatch", wire=wire, calculated=calculated)


def parse_result(line: str) -> Result:
    """One result line of the dump."""
    match = _RESULT_RE.match(line)
    if match is None:
        raise RecordError(f"Optium result line of {len(line)} characters not understood")
    above = match["value"] == "HI "
    return Result(
        meter_time=parse_dump_date(match["date"]),
        value_mg_dl=HI_VALUE_MG_DL if above else int(match["value"]),
        above_range=above,
        kind=match["type"],
    )


def parse_dump(raw: bytes, lines: list[str]) -> Dump:
    """A complete ``$xmem`` response -> verified Dump. Raises FrameError / RecordError."""
    verify_dump(raw, lines)
    if len(lines) < 6 or lines[0] != "":
        raise RecordError("Optium $xmem dump header is incomplete")
    serial, version = lines[1], lines[2]
    if not _SERIAL_RE.match(serial):
        raise RecordError(f"Optium serial number {serial!r} is not in the XXXXXXX-XXXXX form")
    clock = parse_dump_date(lines[3])
    if not lines[4].isdigit():
        raise RecordError(f"Optium $xmem count {lines[4][:8]!r} is not a number")
    count = int(lines[4])
    result_lines = lines[5:-1]
    if count != len(result_lines):
        raise RecordError(f"Optium $xmem announces {count} results but carries {len(result_lines)}")
    return Dump(serial=serial, version=version, clock=clock, results=tuple(parse_result(line) for line in result_lines))


def parse_ok(lines: list[str]) -> None:
    """A command answered only with ``CMD OK`` (``$tim``)."""
    if lines != [CMD_OK]:
        raise RecordError("Optium command was not acknowledged with CMD OK")


# -- meter side (the emulator speaks through these) -------------------------------------------------------


def format_info(info: Info) -> list[str]:
    """``$colq`` response lines for ``info``."""
    return [
        f"S/N:\t{info.serial}",
        f"Ver:\t{info.version}\t{UNIT_TEXT[info.unit]}",
        f"Clock:\t{format_clock(info.clock)}",
        "Market:\t1\t0",
        "ROM:\t0\t0\t0\t0",
        f"Usage:\t{info.count}",
        CMD_OK,
    ]


def format_result(result: Result) -> str:
    """One dump result line."""
    value = "HI " if result.above_range else f"{result.value_mg_dl:03d}"
    return f"{value}  {format_dump_date(result.meter_time, seconds=False)} {result.kind} 0x00"


def dump_head(serial: str, version: str, clock: datetime, count: int) -> bytes:
    """The dump's first lines (as bytes, for streaming)."""
    lines = ["", serial, version, format_dump_date(clock, seconds=True), f"{count:03d}"]
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def dump_tail(body: bytes) -> bytes:
    """The checksum line closing a dump whose preceding bytes are ``body``."""
    return f"0x{checksum(body):04X}  {DUMP_END}\r\n".encode("ascii")
