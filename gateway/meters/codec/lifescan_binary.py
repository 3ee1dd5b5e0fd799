"""LifeScan binary protocol (OneTouch UltraEasy / Ultra Mini), pure codec.

Supports: the shared link layer (STX, length, link-control, message, ETX, CRC-CCITT), the UltraEasy's
link-control handshake (sequence / expect-receive bits, acknowledgements, retransmission of duplicates)
and the messages for serial number, firmware version, display unit, clock read/write, record count and
record read. No I/O: the driver writes the bytes this module builds and feeds what it reads to a
:class:`Link`, which returns events (h11 style).

Wire format (LifeScan's published UltraEasy protocol; glucometer-protocols "shared binary protocol")::

    STX(0x02) len link-control message... ETX(0x03) crc16-le     len = len(message) + 6
    crc16 = CRC-16/CCITT (poly 0x1021) seeded 0xFFFF over STX..ETX

Link-control bits: 0x01 sequence (S), 0x02 expect-receive (E), 0x04 acknowledge, 0x08 disconnect,
0x10 more. Each side keeps the S bit of its next data frame and the S bit it expects next from its peer;
every frame it sends carries both (S = its own send bit, E = the bit it expects). The host opens and closes
the link with a disconnect frame, which the meter acknowledges (``02 06 0C 03 06 AE``) and which resets
both sides' bits to 0. Then, per request:

- the host sends its request with its S and E bits;
- the meter acknowledges it with E toggled (it now expects the other bit: ``02 06 06 03 CD 41`` after a
  first request), then answers with its own S bit; an acknowledgement that does not toggle E means the
  meter took the frame for a repetition, i.e. the two sides are out of step;
- the host acknowledges the answer with E toggled; once its request was acknowledged its own S bit has
  toggled too (``02 06 07 03 FC 72`` after a first exchange, ``02 06 04 03 AF 27`` after the second);
- a data frame whose S bit is not the one expected is a repetition (the peer missed our
  acknowledgement): it is acknowledged again and otherwise ignored;
- a frame with a bad CRC is dropped without a reply; the sender repeats it after its timeout.

These byte sequences come from captures of a real OneTouch UltraMini and of LifeScan's own download
software (see ``docs/meters-serial.md``). A host checks what it receives: an acknowledgement whose bits do
not fit, or a disconnect from the meter in the middle of an exchange, raises
:class:`~gateway.errors.LinkControlError`, after which the driver re-opens the link and repeats the request
(every request is an idempotent read, so nothing is lost or taken twice).

Messages start with the command prefix 0x05; a response repeats it and adds status 0x06 (success).
Records are addressed by index, newest first (index 0 is the latest), so an index is not a stable
record number: records are identified by (time, value). Values are mg/dL, whatever the display unit;
times are the meter's local wall clock as seconds since 1970-01-01.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntFlag

from gateway.errors import FrameError, LinkControlError, RecordError
from gateway.meters.codec.framing import StartSync
from gateway.records import Unit

# -- link layer constants ------------------------------------------------------------------------------

STX = 0x02
ETX = 0x03
FRAME_OVERHEAD = 6  # STX, len, link-control, ETX, 2 CRC bytes
MAX_FRAME = 64
"""No UltraEasy frame is longer; a larger length byte is a framing error."""


class LinkControl(IntFlag):
    """Bits of the link-control byte."""

    SEQUENCE = 0x01
    EXPECT_RECEIVE = 0x02
    ACK = 0x04
    DISCONNECT = 0x08
    MORE = 0x10


# -- message constants -----------------------------------------------------------------------------------

PREFIX = 0x05
STATUS_SUCCESS = 0x06
STATUS_COUNT = 0x0F
"""The record-count reply carries 0x0F where other replies carry the success status."""

REQ_VERSION = bytes([PREFIX, 0x0D, 0x02])
REQ_SERIAL_PREFIX = bytes([PREFIX, 0x0B, 0x02])
REQ_SERIAL = REQ_SERIAL_PREFIX + bytes(9)
"""The serial-number request as LifeScan's own software sends it (all-zero parameters). Other hosts send
``84 6A E8 73 00`` in the last five bytes; the meter answers either (it reads only the prefix)."""
REQ_UNIT_PREFIX = bytes([PREFIX, 0x09, 0x02, 0x09])
REQ_UNIT = REQ_UNIT_PREFIX + bytes(4)
REQ_CLOCK_PREFIX = bytes([PREFIX, 0x20])
CLOCK_WRITE = 0x01
CLOCK_READ = 0x02
REQ_RECORD_PREFIX = bytes([PREFIX, 0x1F])
RECORD_COUNT_INDEX = 501
"""Reading record 501 (one past the memory's 500) returns the record count instead of a record."""
MAX_RECORDS = 500
HI_VALUE = 0xFFFF
"""A reading above the meter's range (shown as HI) is stored with this value (Tidepool's UltraMini driver)."""
VERSION_FIELDS = (9, 8)
"""The version reply's string is a 9-character firmware version and an 8-character build date, unseparated."""

UNIT_CODES: dict[int, Unit] = {0x00: Unit.MG_DL, 0x01: Unit.MMOL_L}
UNIT_BYTES: dict[Unit, int] = {unit: code for code, unit in UNIT_CODES.items()}

EPOCH = datetime(1970, 1, 1)
"""Meter times count seconds from here, in the meter's local wall-clock time."""

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_RECORD = struct.Struct("<II")  # timestamp, value


# -- checksum and dates (module-level, tested directly) -----------------------------------------------


def crc_ccitt(data: bytes) -> int:
    """LifeScan's CRC: CRC-16/CCITT (polynomial 0x1021) seeded with 0xFFFF (stdlib ``crc_hqx``)."""
    return binascii.crc_hqx(data, 0xFFFF)


def decode_timestamp(raw: int) -> datetime:
    """Meter seconds since 1970 (local wall clock) -> naive datetime."""
    return EPOCH + timedelta(seconds=raw)


def encode_timestamp(ts: datetime) -> int:
    """Naive meter-local datetime -> seconds since 1970 as the meter counts them."""
    seconds = int((ts.replace(tzinfo=None) - EPOCH).total_seconds())
    if not 0 <= seconds <= 0xFFFFFFFF:
        raise RecordError(f"time {ts.isoformat()} cannot be written to an UltraEasy clock")
    return seconds


# -- frames ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded link-layer frame."""

    control: LinkControl
    message: bytes

    @property
    def sequence(self) -> bool:
        return LinkControl.SEQUENCE in self.control

    @property
    def expect_receive(self) -> bool:
        return LinkControl.EXPECT_RECEIVE in self.control

    @property
    def is_ack(self) -> bool:
        return LinkControl.ACK in self.control

    @property
    def is_disconnect(self) -> bool:
        return LinkControl.DISCONNECT in self.control


NO_CONTROL = LinkControl(0)


def encode_frame(message: bytes, control: LinkControl = NO_CONTROL) -> bytes:
    """Build one frame around ``message``."""
    length = len(message) + FRAME_OVERHEAD
    if length > MAX_FRAME:
        raise FrameError(f"LifeScan frame of {length} bytes exceeds {MAX_FRAME}")
    body = bytes([STX, length, int(control)]) + message + bytes([ETX])
    return body + _U16.pack(crc_ccitt(body))


class FrameDecoder(StartSync):
    """Finds frames in the byte stream (sans-I/O).

    Bytes before an STX are skipped (line noise). ``next_frame`` returns a Frame, None when more bytes
    are needed, or raises FrameError for a frame with a bad length, ETX or CRC; the bad frame's STX is
    dropped first, so the next call resynchronises on the following STX.
    """

    def __init__(self) -> None:
        super().__init__(STX)

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if incomplete, or FrameError for a damaged one."""
        if not self._align() or len(self._buffer) < 2:
            return None
        length = self._buffer[1]
        if not FRAME_OVERHEAD <= length <= MAX_FRAME:
            del self._buffer[:1]
            raise FrameError(f"LifeScan frame length byte {length} out of range")
        if len(self._buffer) < length:
            return None
        raw = bytes(self._buffer[:length])
        if raw[length - 3] != ETX:
            del self._buffer[:1]
            raise FrameError(f"LifeScan frame of {length} bytes does not end with ETX")
        (wire,) = _U16.unpack_from(raw, length - 2)
        calculated = crc_ccitt(raw[: length - 2])
        if wire != calculated:
            del self._buffer[:1]
            raise FrameError("LifeScan frame CRC mismatch", wire=wire, calculated=calculated)
        del self._buffer[:length]
        return Frame(control=LinkControl(raw[2] & 0x1F), message=raw[3 : length - 3])


# -- host link state machine ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The meter acknowledged our last frame (or, for a disconnect, re-opened the link)."""


@dataclass(frozen=True, slots=True)
class Response:
    """The meter's answer; write ``ack`` back to it."""

    message: bytes
    ack: bytes


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The meter repeated a frame we already took (our ack was lost); write ``ack`` again."""

    ack: bytes


@dataclass(frozen=True, slots=True)
class Ignored:
    """A frame that changes nothing: a late acknowledgement, or the meter's answer arriving while we re-open."""


LinkEvent = Acknowledged | Response | Duplicate | Ignored


def control_bits(*, sequence: bool, expect: bool, ack: bool = False, disconnect: bool = False) -> LinkControl:
    """A link-control byte from its bits."""
    control = LinkControl(0)
    if sequence:
        control |= LinkControl.SEQUENCE
    if expect:
        control |= LinkControl.EXPECT_RECEIVE
    if ack:
        control |= LinkControl.ACK
    if disconnect:
        control |= LinkControl.DISCONNECT
    return control


class Link:
    """Host side of the UltraEasy link layer.

    ``open()`` / ``close()`` / ``request(message)`` return the bytes to write; ``retransmit()`` returns
    the last frame again (same bits) after a timeout. ``receive_frame(frame)`` turns a decoded frame into a
    :data:`LinkEvent` or raises :class:`~gateway.errors.LinkControlError` when the meter's bits show the two
    sides out of step; the caller then re-opens the link (``open()``) and asks again.
    """

    def __init__(self) -> None:
        self.send_sequence = False
        """S bit of our next (or unacknowledged) data frame."""
        self.expect_receive = False
        """S bit we expect in the meter's next data frame."""
        self.awaiting_ack = False
        """A request of ours is not acknowledged yet."""
        self.opening = False
        """A disconnect frame of ours is not acknowledged yet."""
        self._last: bytes = b""

    def _control(self, *, ack: bool = False, disconnect: bool = False) -> LinkControl:
        return control_bits(sequence=self.send_sequence, expect=self.expect_receive, ack=ack, disconnect=disconnect)

    def open(self) -> bytes:
        """The disconnect frame that (re)starts a link; both sides' bits reset to 0."""
        self.send_sequence = self.expect_receive = self.awaiting_ack = False
        self.opening = True
        self._last = encode_frame(b"", self._control(disconnect=True))
        return self._last

    close = open

    def request(self, message: bytes) -> bytes:
        """Frame a request with our current bits; S toggles once the meter acknowledges it."""
        self._last = encode_frame(message, self._control())
        self.awaiting_ack = True
        return self._last

    def retransmit(self) -> bytes:
        """The last frame again, unchanged (the meter treats it as a repetition if it had it)."""
        return self._last

    def _ack(self) -> bytes:
        return encode_frame(b"", self._control(ack=True))

    def _acknowledges(self, frame: Frame) -> None:
        """Take ``frame``'s E bit as the meter's word on our last request (toggled: taken; not: out of step)."""
        if frame.expect_receive == self.send_sequence:
            raise LinkControlError(
                "the meter did not take our request as new",
                field="expect_receive",
                expected=int(not self.send_sequence),
                received=int(frame.expect_receive),
                control=int(frame.control),
            )
        self.send_sequence = not self.send_sequence
        self.awaiting_ack = False

    def receive_frame(self, frame: Frame) -> LinkEvent:
        """Classify a frame from the meter, checking its link-control bits."""
        if self.opening:
            # Until the link is re-opened, only the disconnect's acknowledgement counts: anything else is the
            # tail of the exchange we are abandoning.
            if frame.is_disconnect:
                self.opening = False
                return Acknowledged()
            return Ignored()
        if frame.is_disconnect:
            raise LinkControlError(
                "the meter reset the link", field="disconnect", expected=0, received=1, control=int(frame.control)
            )
        if frame.is_ack:
            if not self.awaiting_ack:
                return Ignored()  # a repeated acknowledgement of a frame already acknowledged
            if frame.sequence != self.expect_receive:
                raise LinkControlError(
                    "the meter's sequence bit is out of step with ours",
                    field="sequence",
                    expected=int(self.expect_receive),
                    received=int(frame.sequence),
                    control=int(frame.control),
                )
            self._acknowledges(frame)
            return Acknowledged()
        if frame.sequence != self.expect_receive:
            return Duplicate(ack=self._ack())
        if self.awaiting_ack:
            # The acknowledgement was lost on the line: the answer's E bit acknowledges our request as well.
            self._acknowledges(frame)
        self.expect_receive = not self.expect_receive
        return Response(message=frame.message, ack=self._ack())


# -- messages -------------------------------------------------------------------------------------------


def clock_read_request() -> bytes:
    """Request for the meter clock."""
    return REQ_CLOCK_PREFIX + bytes([CLOCK_READ]) + _U32.pack(0)


def clock_write_request(ts: datetime) -> bytes:
    """Request that sets the meter clock to ``ts`` (naive meter-local time)."""
    return REQ_CLOCK_PREFIX + bytes([CLOCK_WRITE]) + _U32.pack(encode_timestamp(ts))


def record_request(index: int) -> bytes:
    """Request for record ``index`` (0 = newest) or, with :data:`RECORD_COUNT_INDEX`, the count."""
    if not 0 <= index <= 0xFFFF:
        raise RecordError(f"record index {index} out of range")
    return REQ_RECORD_PREFIX + _U16.pack(index)


def _success_payload(message: bytes, what: str) -> bytes:
    if len(message) < 2 or message[0] != PREFIX:
        raise RecordError(f"UltraEasy {what} reply does not start with the command prefix")
    if message[1] != STATUS_SUCCESS:
        raise RecordError(f"UltraEasy {what} reply reports status 0x{message[1]:02x}, not success")
    return message[2:]


def parse_version(message: bytes) -> str:
    """Firmware version (a length-prefixed ASCII string: version and build date, shown with a space between)."""
    payload = _success_payload(message, "version")
    if not payload or len(payload) < 1 + payload[0]:
        raise RecordError("UltraEasy version reply is truncated")
    text = _ascii(payload[1 : 1 + payload[0]], "version").rstrip("\x00")
    version_len, date_len = VERSION_FIELDS
    if len(text) == version_len + date_len:
        return f"{text[:version_len]} {text[version_len:]}"
    return text


def parse_serial(message: bytes) -> str:
    """Serial number (ASCII, trailing NULs stripped)."""
    serial = _ascii(_success_payload(message, "serial number").rstrip(b"\x00"), "serial number").strip()
    if not serial or not serial.isalnum():
        raise RecordError(f"UltraEasy serial number {serial!r} is not alphanumeric")
    return serial


def parse_unit(message: bytes) -> Unit:
    """Display unit."""
    payload = _success_payload(message, "unit")
    if len(payload) < 1 or payload[0] not in UNIT_CODES:
        raise RecordError(f"UltraEasy unit reply carries an unknown unit code {payload[:1].hex()}")
    return UNIT_CODES[payload[0]]


def parse_clock(message: bytes) -> datetime:
    """Meter clock (from a clock read or write reply)."""
    payload = _success_payload(message, "clock")
    if len(payload) != _U32.size:
        raise RecordError(f"UltraEasy clock reply has {len(payload)} data bytes, expected 4")
    return decode_timestamp(_U32.unpack(payload)[0])


def parse_record_count(message: bytes) -> int:
    """Number of records stored."""
    if len(message) != 4 or message[0] != PREFIX or message[1] != STATUS_COUNT:
        raise RecordError(f"UltraEasy record-count reply of {len(message)} bytes not understood")
    count: int = _U16.unpack_from(message, 2)[0]
    if count > MAX_RECORDS:
        raise RecordError(f"UltraEasy reports {count} records, more than its memory holds")
    return count


def parse_record(message: bytes) -> tuple[datetime, int]:
    """One record: (meter time, value in mg/dL; :data:`HI_VALUE` for a reading above the meter's range)."""
    payload = _success_payload(message, "record")
    if len(payload) != _RECORD.size:
        raise RecordError(f"UltraEasy record reply has {len(payload)} data bytes, expected 8")
    timestamp, value = _RECORD.unpack(payload)
    if value > 0xFFFF:
        raise RecordError("UltraEasy record value is impossible (above 65535)")
    return decode_timestamp(timestamp), value


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError(f"UltraEasy {what} is not ASCII") from None


# -- meter side (the emulator speaks through these) ----------------------------------------------------


def success(payload: bytes = b"") -> bytes:
    """A success reply message carrying ``payload``."""
    return bytes([PREFIX, STATUS_SUCCESS]) + payload


def version_reply(version: str) -> bytes:
    """The version reply as the meter sends it: ``"P02.00.00 30/08/06"`` goes out as its two fields, unseparated."""
    version_len, date_len = VERSION_FIELDS
    if len(version) == version_len + 1 + date_len and version[version_len] == " ":
        version = version[:version_len] + version[version_len + 1 :]
    raw = version.encode("ascii")
    return success(bytes([len(raw)]) + raw)


def serial_reply(serial: str) -> bytes:
    """The serial-number reply: the number's ASCII characters, nothing else."""
    return success(serial.encode("ascii"))


def clock_reply(ts: datetime) -> bytes:
    return success(_U32.pack(encode_timestamp(ts)))


def unit_reply(unit: Unit) -> bytes:
    return success(bytes([UNIT_BYTES[unit], 0, 0, 0]))


def count_reply(count: int) -> bytes:
    return bytes([PREFIX, STATUS_COUNT]) + _U16.pack(count)


def record_reply(ts: datetime, value: int) -> bytes:
    return success(_RECORD.pack(encode_timestamp(ts), value))
