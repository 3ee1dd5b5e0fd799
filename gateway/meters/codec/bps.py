"""Bluetooth SIG Blood Pressure Service (BLS 1.1.1, service 0x1810): decoding, stored records, and RACP.

PURE and sans-I/O: bytes in, values and events out, no asyncio, no clock. Malformed input raises only
:class:`~gateway.errors.FrameError` (length, framing) or :class:`~gateway.errors.RecordError` (impossible
content), both :class:`~gateway.errors.ProtocolError`, with a message saying what is wrong and where. The
characteristics' layouts are those of the GATT Specification Supplement (GSS), section numbers as in GSS v10.

Supported (every field of the spec):

- Blood Pressure Measurement 0x2A35 (GSS 3.31): flags; systolic, diastolic and mean arterial pressure as
  SFLOAT in mmHg or kPa (special values kept as :class:`~gateway.meters.codec.ieee11073.Special`, exactly as
  the Glucose codec keeps them); time stamp (Date Time); pulse rate (SFLOAT, beats per minute); user id
  (0xFF: unknown user); measurement status (body movement, cuff fit, irregular pulse, pulse rate range (two
  bits), measurement position; reserved bits kept).
- Intermediate Cuff Pressure 0x2A36 (GSS 3.133): the same layout; the systolic field carries the current cuff
  pressure, diastolic and mean arterial pressure are unused (NaN).
- Blood Pressure Feature 0x2A49 (GSS 3.32): the support bits (reserved ones kept).
- Stored records (BLS 1.1): Blood Pressure Record 0x2B36 (GSS 3.33), segmented (first/last segment, rolling
  segment counter), holding a sequence number, the UUID of the recorded characteristic and its value, and an
  optional E2E-CRC; :class:`BpsDownload`, the Record Access Control Point conversation, is the Glucose codec's
  :class:`~gateway.meters.codec.gls.RacpDownload` (same characteristic 0x2A52, same op codes, operators,
  filters and response codes: the RACP codec is shared, not copied).

Choices where the specification leaves room (docs/meters-ble.md):

- a multi-segment record is the concatenation of its segments after each one's Segmentation Header;
  segments of one record carry consecutive rolling counters (modulo 64), anything else drops the record;
- the E2E-CRC, when present (2 bytes after the recorded value, which the Measurement's own flags size), is
  CRC-16/MCRF4XX (the CRC-CCITT of the Bluetooth health services: polynomial 0x1021 reflected, seed 0xFFFF)
  over the sequence number, the UUID and the recorded value;
- a record holding anything but a Blood Pressure Measurement (an Enhanced Blood Pressure Measurement 0x2B34)
  is a RecordError naming the UUID: it is not decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, IntFlag

from gateway.errors import FrameError, RecordError
from gateway.meters.codec.gls import (
    RACP_UUID,
    TRANSITIONS,
    RacpDownload,
    RacpEvent,
    Trigger,
    uuid16,
)
from gateway.meters.codec.ieee11073 import (
    DATE_TIME,
    Number,
    decode_date_time,
    decode_sfloat,
    encode_date_time,
    encode_sfloat,
)
from gateway.records import PressureUnit

# --------------------------------------------------------------------------------------------- assigned numbers

BLOOD_PRESSURE_SERVICE_UUID = uuid16(0x1810)
BLOOD_PRESSURE_MEASUREMENT = 0x2A35
INTERMEDIATE_CUFF_PRESSURE = 0x2A36
BLOOD_PRESSURE_FEATURE = 0x2A49
ENHANCED_BLOOD_PRESSURE_MEASUREMENT = 0x2B34
BLOOD_PRESSURE_RECORD = 0x2B36
BLOOD_PRESSURE_MEASUREMENT_UUID = uuid16(BLOOD_PRESSURE_MEASUREMENT)
INTERMEDIATE_CUFF_PRESSURE_UUID = uuid16(INTERMEDIATE_CUFF_PRESSURE)
BLOOD_PRESSURE_FEATURE_UUID = uuid16(BLOOD_PRESSURE_FEATURE)
BLOOD_PRESSURE_RECORD_UUID = uuid16(BLOOD_PRESSURE_RECORD)
BLOOD_PRESSURE_APPEARANCE = 0x0380
"""Appearance "Generic Blood Pressure" (category 0x00E, sub-category 0)."""

UNKNOWN_USER = 0xFF
"""User ID meaning "unknown user" (GSS 3.31: the cuff does not know who measured)."""

__all__ = [
    "BLOOD_PRESSURE_FEATURE_UUID",
    "BLOOD_PRESSURE_MEASUREMENT_UUID",
    "BLOOD_PRESSURE_RECORD_UUID",
    "BLOOD_PRESSURE_SERVICE_UUID",
    "INTERMEDIATE_CUFF_PRESSURE_UUID",
    "RACP_UUID",
    "BloodPressureFeature",
    "BloodPressureMeasurement",
    "BpsDownload",
    "MeasurementFlags",
    "MeasurementStatus",
    "PulseRateRange",
    "RecordAssembler",
    "RecordDropped",
    "StoredMeasurement",
    "StoredRecord",
]

# ------------------------------------------------------------------------------------ Blood Pressure Measurement


class MeasurementFlags(IntFlag):
    """Blood Pressure Measurement flags (bits 5-7 are reserved for future use and ignored)."""

    UNITS_KPA = 0x01
    """Set: pressures in kPa; clear: in mmHg."""
    TIME_STAMP = 0x02
    PULSE_RATE = 0x04
    USER_ID = 0x08
    MEASUREMENT_STATUS = 0x10


class MeasurementStatus(IntFlag):
    """Measurement Status bits. Bits 3-4 together are the pulse rate range (:class:`PulseRateRange`); bits 6-15
    are reserved (kept, named ``reserved_bit_<n>``)."""

    BODY_MOVEMENT = 1 << 0
    """Body movement during the measurement."""
    CUFF_TOO_LOOSE = 1 << 1
    """Cuff fit detection: the cuff is too loose."""
    IRREGULAR_PULSE = 1 << 2
    PULSE_RATE_RANGE_LOW_BIT = 1 << 3
    PULSE_RATE_RANGE_HIGH_BIT = 1 << 4
    IMPROPER_POSITION = 1 << 5
    """Measurement position detection: improper measurement position."""


PULSE_RATE_RANGE_SHIFT = 3
PULSE_RATE_RANGE_MASK = 0b11 << PULSE_RATE_RANGE_SHIFT


class PulseRateRange(IntEnum):
    """The two-bit Pulse Rate Range Detection field of the Measurement Status."""

    WITHIN_RANGE = 0
    EXCEEDS_UPPER_LIMIT = 1
    BELOW_LOWER_LIMIT = 2
    RESERVED = 3


def pulse_rate_range(status: MeasurementStatus | int) -> PulseRateRange:
    """The pulse rate range of a Measurement Status."""
    return PulseRateRange((int(status) & PULSE_RATE_RANGE_MASK) >> PULSE_RATE_RANGE_SHIFT)


_STATUS_BITS = {
    MeasurementStatus.BODY_MOVEMENT: "body_movement",
    MeasurementStatus.CUFF_TOO_LOOSE: "cuff_too_loose",
    MeasurementStatus.IRREGULAR_PULSE: "irregular_pulse",
    MeasurementStatus.IMPROPER_POSITION: "improper_measurement_position",
}
_PULSE_RANGE_NAMES = {
    PulseRateRange.EXCEEDS_UPPER_LIMIT: "pulse_rate_above_range",
    PulseRateRange.BELOW_LOWER_LIMIT: "pulse_rate_below_range",
    PulseRateRange.RESERVED: "pulse_rate_range_reserved",
}


def status_names(status: MeasurementStatus | int) -> tuple[str, ...]:
    """Lower-case names of what a Measurement Status reports, in bit order (nothing for "all fine")."""
    value = int(status)
    names: list[str] = []
    for bit in range(16):
        mask = 1 << bit
        if mask & PULSE_RATE_RANGE_MASK:
            if bit == PULSE_RATE_RANGE_SHIFT and (rng := pulse_rate_range(value)) in _PULSE_RANGE_NAMES:
                names.append(_PULSE_RANGE_NAMES[rng])
            continue
        if value & mask:
            names.append(_STATUS_BITS.get(MeasurementStatus(mask), f"reserved_bit_{bit}"))
    return tuple(names)


_FLAGS = struct.Struct("<B")
_UINT16 = struct.Struct("<H")
_SFLOAT_SIZE = 2
_COMPOUND_SIZE = 3 * _SFLOAT_SIZE
"""Systolic, diastolic, mean arterial pressure."""

# Optional fields in wire order after the compound value: (flag, bytes)
_OPTIONAL_FIELDS: tuple[tuple[MeasurementFlags, int], ...] = (
    (MeasurementFlags.TIME_STAMP, DATE_TIME.size),
    (MeasurementFlags.PULSE_RATE, _SFLOAT_SIZE),
    (MeasurementFlags.USER_ID, 1),
    (MeasurementFlags.MEASUREMENT_STATUS, 2),
)


def measurement_length(flags: int) -> int:
    """The length of a Blood Pressure Measurement (or Intermediate Cuff Pressure) value with these flags."""
    return _FLAGS.size + _COMPOUND_SIZE + sum(size for flag, size in _OPTIONAL_FIELDS if flags & flag)


@dataclass(frozen=True, slots=True)
class BloodPressureMeasurement:
    """One decoded Blood Pressure Measurement (0x2A35). Pressures are in ``unit`` and may be :class:`Special`."""

    flags: int
    unit: PressureUnit
    systolic: Number
    diastolic: Number
    mean_arterial: Number
    time_stamp: datetime | None = None
    """The cuff's own wall-clock time of the measurement (naive)."""
    pulse_rate: Number | None = None
    """Beats per minute."""
    user_id: int | None = None
    """0..254, or :data:`UNKNOWN_USER`."""
    status: MeasurementStatus | None = None


def parse_measurement(data: bytes, *, what: str = "blood pressure measurement") -> BloodPressureMeasurement:
    """Decode a Blood Pressure Measurement indication (or, with ``what``, an Intermediate Cuff Pressure)."""
    data = bytes(data)
    if len(data) < _FLAGS.size + _COMPOUND_SIZE:
        raise FrameError(f"{what}: {len(data)} bytes, at least 7 needed (flags, systolic, diastolic, mean)")
    flags = data[0]
    expected = measurement_length(flags)
    if len(data) != expected:
        raise FrameError(f"{what}: flags 0x{flags:02x} need {expected} bytes, got {len(data)}")
    unit = PressureUnit.KPA if flags & MeasurementFlags.UNITS_KPA else PressureUnit.MMHG
    systolic, diastolic, mean = (decode_sfloat(data, 1 + i * _SFLOAT_SIZE) for i in range(3))
    pos = _FLAGS.size + _COMPOUND_SIZE
    time_stamp = None
    if flags & MeasurementFlags.TIME_STAMP:
        time_stamp = decode_date_time(data, pos, what=f"{what} time stamp")
        pos += DATE_TIME.size
    pulse = None
    if flags & MeasurementFlags.PULSE_RATE:
        pulse = decode_sfloat(data, pos)
        pos += _SFLOAT_SIZE
    user_id = None
    if flags & MeasurementFlags.USER_ID:
        user_id = data[pos]
        pos += 1
    status = None
    if flags & MeasurementFlags.MEASUREMENT_STATUS:
        status = MeasurementStatus(_UINT16.unpack_from(data, pos)[0])
    return BloodPressureMeasurement(
        flags=flags,
        unit=unit,
        systolic=systolic,
        diastolic=diastolic,
        mean_arterial=mean,
        time_stamp=time_stamp,
        pulse_rate=pulse,
        user_id=user_id,
        status=status,
    )


def encode_measurement(m: BloodPressureMeasurement) -> bytes:
    """Encode a measurement (tests, fuzzing). Flags come from which fields are set, and the unit."""
    flags = MeasurementFlags.UNITS_KPA if m.unit is PressureUnit.KPA else 0
    body = b"".join(encode_sfloat(v) for v in (m.systolic, m.diastolic, m.mean_arterial))
    if m.time_stamp is not None:
        flags |= MeasurementFlags.TIME_STAMP
        body += encode_date_time(m.time_stamp)
    if m.pulse_rate is not None:
        flags |= MeasurementFlags.PULSE_RATE
        body += encode_sfloat(m.pulse_rate)
    if m.user_id is not None:
        flags |= MeasurementFlags.USER_ID
        body += bytes([m.user_id])
    if m.status is not None:
        flags |= MeasurementFlags.MEASUREMENT_STATUS
        body += _UINT16.pack(int(m.status))
    return _FLAGS.pack(flags) + body


@dataclass(frozen=True, slots=True)
class IntermediateCuffPressure:
    """One Intermediate Cuff Pressure notification (0x2A36): the cuff pressure while a measurement runs."""

    unit: PressureUnit
    cuff_pressure: Number
    time_stamp: datetime | None = None
    pulse_rate: Number | None = None
    user_id: int | None = None
    status: MeasurementStatus | None = None


def parse_intermediate_cuff_pressure(data: bytes) -> IntermediateCuffPressure:
    """Decode an Intermediate Cuff Pressure notification (the Measurement's layout; diastolic and mean unused)."""
    m = parse_measurement(data, what="intermediate cuff pressure")
    return IntermediateCuffPressure(
        unit=m.unit,
        cuff_pressure=m.systolic,
        time_stamp=m.time_stamp,
        pulse_rate=m.pulse_rate,
        user_id=m.user_id,
        status=m.status,
    )


# ------------------------------------------------------------------------------------------------------ Feature


class BloodPressureFeature(IntFlag):
    """Blood Pressure Feature bits (bits 9-15 reserved; bits 6-8 are BLS 1.1's, reserved in BLS 1.0)."""

    BODY_MOVEMENT_DETECTION = 1 << 0
    CUFF_FIT_DETECTION = 1 << 1
    IRREGULAR_PULSE_DETECTION = 1 << 2
    PULSE_RATE_RANGE_DETECTION = 1 << 3
    MEASUREMENT_POSITION_DETECTION = 1 << 4
    MULTIPLE_BOND = 1 << 5
    E2E_CRC = 1 << 6
    USER_DATA_SERVICE = 1 << 7
    USER_FACING_TIME = 1 << 8


def parse_feature(data: bytes) -> BloodPressureFeature:
    """Decode the Blood Pressure Feature characteristic (2 bytes); reserved bits are kept."""
    data = bytes(data)
    if len(data) != 2:
        raise FrameError(f"blood pressure feature: {len(data)} bytes, 2 expected")
    return BloodPressureFeature(_UINT16.unpack(data)[0])


# ------------------------------------------------------------------------------------ Blood Pressure Record


class SegmentationHeader(IntFlag):
    """Segmentation Header bits 0-1; bits 2-7 are the rolling segment counter."""

    FIRST_SEGMENT = 0x01
    LAST_SEGMENT = 0x02


SEGMENT_COUNTER_SHIFT = 2
SEGMENT_COUNTER_MODULO = 64
_RECORD_HEAD = struct.Struct("<HH")  # sequence number, UUID of the recorded characteristic


@dataclass(frozen=True, slots=True)
class RecordSegment:
    """One Blood Pressure Record notification: where it sits in its record, and its part of the record."""

    first: bool
    last: bool
    counter: int
    payload: bytes


def parse_record_segment(data: bytes) -> RecordSegment:
    """Decode one Blood Pressure Record notification (Segmentation Header + a part of the record)."""
    data = bytes(data)
    if len(data) < 2:
        raise FrameError(f"blood pressure record segment: {len(data)} bytes, at least 2 needed (header, data)")
    header = data[0]
    return RecordSegment(
        first=bool(header & SegmentationHeader.FIRST_SEGMENT),
        last=bool(header & SegmentationHeader.LAST_SEGMENT),
        counter=header >> SEGMENT_COUNTER_SHIFT,
        payload=data[1:],
    )


def segment_header(*, first: bool, last: bool, counter: int) -> int:
    """The Segmentation Header byte (the counter taken modulo 64)."""
    flags = (SegmentationHeader.FIRST_SEGMENT if first else 0) | (SegmentationHeader.LAST_SEGMENT if last else 0)
    return ((counter % SEGMENT_COUNTER_MODULO) << SEGMENT_COUNTER_SHIFT) | int(flags)


def e2e_crc(data: bytes) -> int:
    """CRC-16/MCRF4XX (polynomial 0x1021 reflected as 0x8408, seed 0xFFFF, no final XOR): the E2E-CRC of the
    Bluetooth health services. ``e2e_crc(b"123456789") == 0x6F91``."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One complete Blood Pressure Record: its sequence number and the measurement it holds."""

    sequence: int
    measurement: BloodPressureMeasurement
    e2e_crc: int | None = None
    """The checked E2E-CRC when the cuff sent one."""


def parse_record(body: bytes) -> StoredRecord:
    """Decode a reassembled Blood Pressure Record (sequence number, UUID, recorded value, optional E2E-CRC)."""
    body = bytes(body)
    if len(body) < _RECORD_HEAD.size + 1:
        raise FrameError(f"blood pressure record: {len(body)} bytes, at least 5 needed (sequence, UUID, value)")
    sequence, uuid = _RECORD_HEAD.unpack_from(body)
    if uuid != BLOOD_PRESSURE_MEASUREMENT:
        raise RecordError(
            f"blood pressure record seq {sequence}: recorded characteristic 0x{uuid:04X} is not decoded "
            f"(only Blood Pressure Measurement 0x{BLOOD_PRESSURE_MEASUREMENT:04X})"
        )
    start = _RECORD_HEAD.size
    end = start + measurement_length(body[start])
    extra = len(body) - end
    crc = None
    if extra == 2:
        (crc,) = _UINT16.unpack_from(body, end)
        if (calculated := e2e_crc(body[:end])) != crc:
            raise FrameError(
                f"blood pressure record seq {sequence}: E2E-CRC 0x{crc:04X}, calculated 0x{calculated:04X}"
            )
    elif extra != 0:
        raise FrameError(
            f"blood pressure record seq {sequence}: flags 0x{body[start]:02x} need {end} bytes "
            f"(or {end + 2} with an E2E-CRC), got {len(body)}"
        )
    measurement = parse_measurement(body[start:end], what=f"blood pressure record seq {sequence}")
    return StoredRecord(sequence=sequence, measurement=measurement, e2e_crc=crc)


def encode_record(
    sequence: int, measurement: bytes, *, crc: bool = False, segment_size: int | None = None, counter: int = 0
) -> list[bytes]:
    """The Blood Pressure Record notifications of one stored measurement (tests, fuzzing): split after the
    Segmentation Header into parts of at most ``segment_size`` bytes, counters from ``counter``."""
    body = _RECORD_HEAD.pack(sequence, BLOOD_PRESSURE_MEASUREMENT) + measurement
    if crc:
        body += _UINT16.pack(e2e_crc(body))
    size = segment_size or len(body)
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return [
        bytes([segment_header(first=i == 0, last=i == len(parts) - 1, counter=counter + i)]) + part
        for i, part in enumerate(parts)
    ]


class RecordAssembler:
    """Joins Blood Pressure Record segments into records.

    A continuation segment that does not continue the record being assembled (no first segment before it, a
    counter out of sequence) is a RecordError, and the partial record is dropped. A first segment while a
    record is still open drops the open one too (its last segment never came), without losing the new one:
    :attr:`dropped` names each record dropped that way.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._counter: int | None = None
        self.dropped: list[str] = []

    @property
    def pending(self) -> bool:
        """A record is partly assembled."""
        return self._counter is not None

    def reset(self) -> None:
        """Drop a partial record (the link went down)."""
        self._parts, self._counter = [], None

    def feed(self, segment: RecordSegment) -> StoredRecord | None:
        """Add a segment; the record once its last segment arrived, else None."""
        if segment.first:
            if self._counter is not None:
                self.dropped.append(
                    f"blood pressure record: segment {segment.counter} began a new record before the one "
                    f"open since segment {self._counter - len(self._parts) + 1} ended"
                )
            self._parts = [segment.payload]
        else:
            if self._counter is None or segment.counter != (self._counter + 1) % SEGMENT_COUNTER_MODULO:
                after = "no first segment" if self._counter is None else f"segment {self._counter}"
                self.reset()
                raise RecordError(f"blood pressure record: segment {segment.counter} does not follow {after}")
            self._parts.append(segment.payload)
        self._counter = segment.counter
        if not segment.last:
            return None
        body = b"".join(self._parts)
        self.reset()
        return parse_record(body)


# ---------------------------------------------------------------------------------- the download conversation


@dataclass(frozen=True, slots=True)
class StoredMeasurement:
    """A stored measurement reported through the Record Access Control Point."""

    sequence: int
    measurement: BloodPressureMeasurement


@dataclass(frozen=True, slots=True)
class RecordDropped:
    """A record whose segments never completed (the cuff began the next one): what was lost, for the log."""

    reason: str


BpsEvent = StoredMeasurement | RecordDropped | RacpEvent


class BpsDownload(RacpDownload[StoredMeasurement]):
    """The RACP download of a BLS 1.1 cuff's stored records: :class:`~gateway.meters.codec.gls.RacpDownload`
    (same requests, answers and states as a glucose meter's) with Blood Pressure Record notifications.

    ``receive`` raises ProtocolError for a malformed record (or one out of place), leaving the conversation's
    state unchanged, so the caller may skip it and carry on.
    """

    service = "BPS"

    def __init__(self, since: int | None = None, *, count_first: bool = True) -> None:
        super().__init__(since, count_first=count_first)
        self._assembler = RecordAssembler()

    def receive(self, char_uuid: str, data: bytes) -> list[BpsEvent]:
        """Feed one notification/indication; return the events it completes."""
        uuid = char_uuid.lower()
        if uuid == BLOOD_PRESSURE_RECORD_UUID:
            if (self.state, Trigger.MEASUREMENT) not in TRANSITIONS:
                raise RecordError(f"BPS download: record is not expected while {self.state.value}")
            assembler = self._assembler
            record = assembler.feed(parse_record_segment(data))
            events: list[BpsEvent] = [RecordDropped(reason) for reason in assembler.dropped]
            assembler.dropped.clear()
            if record is not None:
                self._move(Trigger.MEASUREMENT)
                self.received += 1
                events.append(StoredMeasurement(record.sequence, record.measurement))
            return events
        if uuid == RACP_UUID:
            return [*self.receive_racp(data)]
        raise RecordError(f"BPS download: notification from unexpected characteristic {char_uuid}")

    def connection_lost(self) -> list[StoredMeasurement]:
        """The link dropped: a partly assembled record is lost with it (the cuff sends it again next time)."""
        self._assembler.reset()
        return super().connection_lost()
