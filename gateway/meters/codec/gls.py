"""Bluetooth SIG Glucose Service (GLS 1.0.1, service 0x1808): decoding, RACP requests, and the download conversation.

PURE and sans-I/O: bytes in, values and events out, no asyncio, no clock. Malformed input raises only
:class:`~gateway.errors.FrameError` (length, framing) or :class:`~gateway.errors.RecordError` (impossible
content), both :class:`~gateway.errors.ProtocolError`, with a message saying what is wrong and where.

Supported (every field of the spec):

- Glucose Measurement 0x2A18: flags, sequence number, base time, time offset, concentration in kg/L or mol/L
  (SFLOAT, special values kept as :class:`~gateway.meters.codec.ieee11073.Special`), type and sample location,
  sensor status annunciation, "context information follows".
- Glucose Measurement Context 0x2A34: extended flags, carbohydrate id and amount (kg), meal, tester and health,
  exercise duration and intensity, medication id and amount (kg or L), HbA1c (%).
- Glucose Feature 0x2A51 bits; Record Access Control Point 0x2A52: op codes, operators, filter types (sequence
  number, user facing time) and response codes as tables, request encoders and a response parser (and the
  request parser an emulated meter needs).
- Current Time 0x2A2B (Exact Time 256 + adjust reason) and Device Information strings (0x2A24/25/26).
- :class:`RacpDownload`: the RACP conversation as a state machine (states in one table), shared with every
  service that stores records behind a RACP (the Blood Pressure Service's :mod:`~gateway.meters.codec.bps`);
  :class:`GlsDownload` on it pairs each context with its measurement by sequence number.

Codes that the spec reserves are kept as plain ints (so a reading is never dropped for an RFU nibble); every
known code appears once below, named.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum, IntEnum, IntFlag
from typing import Generic, TypeVar

from gateway.errors import FrameError, RecordError
from gateway.meters.codec.ieee11073 import (
    DATE_TIME,
    Number,
    decode_date_time,
    decode_sfloat,
    encode_date_time,
    encode_sfloat,
)

# --------------------------------------------------------------------------------------------- assigned numbers


def uuid16(short: int) -> str:
    """The full 128-bit UUID string of a 16-bit Bluetooth SIG assigned number."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


GLUCOSE_SERVICE_UUID = uuid16(0x1808)
GLUCOSE_MEASUREMENT_UUID = uuid16(0x2A18)
GLUCOSE_CONTEXT_UUID = uuid16(0x2A34)
GLUCOSE_FEATURE_UUID = uuid16(0x2A51)
RACP_UUID = uuid16(0x2A52)
DEVICE_INFORMATION_SERVICE_UUID = uuid16(0x180A)
MODEL_NUMBER_UUID = uuid16(0x2A24)
SERIAL_NUMBER_UUID = uuid16(0x2A25)
FIRMWARE_REVISION_UUID = uuid16(0x2A26)
MANUFACTURER_NAME_UUID = uuid16(0x2A29)
CURRENT_TIME_SERVICE_UUID = uuid16(0x1805)
CURRENT_TIME_UUID = uuid16(0x2A2B)
GLUCOSE_METER_APPEARANCE = 0x0D00

_T = TypeVar("_T", bound=IntEnum)


def _code(enum: type[_T], value: int) -> _T | int:
    """The named member for ``value``, or the raw int when the spec reserves it."""
    try:
        return enum(value)
    except ValueError:
        return value


def code_name(value: Enum | int | None) -> str | None:
    """A stable lower-case name for a code (``capillary_whole_blood``), ``reserved_<n>`` for unknown ones."""
    if value is None:
        return None
    if isinstance(value, Enum):
        return value.name.lower()
    return f"reserved_{value}"


# ------------------------------------------------------------------------------------------ Glucose Measurement


class MeasurementFlags(IntFlag):
    """Glucose Measurement flags (bits 5-7 are reserved for future use and ignored)."""

    TIME_OFFSET = 0x01
    CONCENTRATION_TYPE_LOCATION = 0x02
    UNITS_MOL_PER_L = 0x04
    """Set: concentration in mol/L; clear: in kg/L."""
    SENSOR_STATUS = 0x08
    CONTEXT_FOLLOWS = 0x10


class ConcentrationUnit(Enum):
    """Wire unit of a GLS concentration."""

    KG_PER_L = "kg/L"
    MOL_PER_L = "mol/L"


class SampleType(IntEnum):
    """Type nibble (low 4 bits of the Type-Sample Location byte)."""

    CAPILLARY_WHOLE_BLOOD = 1
    CAPILLARY_PLASMA = 2
    VENOUS_WHOLE_BLOOD = 3
    VENOUS_PLASMA = 4
    ARTERIAL_WHOLE_BLOOD = 5
    ARTERIAL_PLASMA = 6
    UNDETERMINED_WHOLE_BLOOD = 7
    UNDETERMINED_PLASMA = 8
    INTERSTITIAL_FLUID = 9
    CONTROL_SOLUTION = 10


class SampleLocation(IntEnum):
    """Sample Location nibble (high 4 bits of the Type-Sample Location byte)."""

    FINGER = 1
    ALTERNATE_SITE_TEST = 2
    EARLOBE = 3
    CONTROL_SOLUTION = 4
    NOT_AVAILABLE = 15


class SensorStatus(IntFlag):
    """Sensor Status Annunciation bits (12-15 reserved)."""

    BATTERY_LOW = 1 << 0
    SENSOR_MALFUNCTION = 1 << 1
    SAMPLE_SIZE_INSUFFICIENT = 1 << 2
    STRIP_INSERTION_ERROR = 1 << 3
    STRIP_TYPE_INCORRECT = 1 << 4
    RESULT_TOO_HIGH = 1 << 5
    RESULT_TOO_LOW = 1 << 6
    TEMPERATURE_TOO_HIGH = 1 << 7
    TEMPERATURE_TOO_LOW = 1 << 8
    READ_INTERRUPTED = 1 << 9
    GENERAL_DEVICE_FAULT = 1 << 10
    TIME_FAULT = 1 << 11


def sensor_status_names(status: SensorStatus | int) -> tuple[str, ...]:
    """Lower-case names of the set annunciation bits (``reserved_bit_<n>`` for RFU bits)."""
    known = {member.value: member.name.lower() for member in SensorStatus if member.name}
    return tuple(known.get(1 << bit, f"reserved_bit_{bit}") for bit in range(16) if int(status) & (1 << bit))


_MEAS_HEAD = struct.Struct("<BH")  # flags, sequence number
_INT16 = struct.Struct("<h")
_UINT16 = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class GlucoseMeasurement:
    """One decoded Glucose Measurement (0x2A18)."""

    flags: int
    sequence: int
    base_time: datetime
    time_offset_min: int | None = None
    concentration: Number | None = None
    """In ``unit``; a :class:`Special` when the meter says NaN, NRes, +INF, -INF or reserved."""
    unit: ConcentrationUnit | None = None
    sample_type: SampleType | int | None = None
    sample_location: SampleLocation | int | None = None
    sensor_status: SensorStatus | None = None

    @property
    def context_follows(self) -> bool:
        """The meter will send a Context with the same sequence number next."""
        return bool(self.flags & MeasurementFlags.CONTEXT_FOLLOWS)

    @property
    def time(self) -> datetime:
        """User facing time: base time plus time offset (the meter's own wall clock)."""
        return self.base_time + timedelta(minutes=self.time_offset_min or 0)

    def glucose(self) -> tuple[Decimal, str] | None:
        """The concentration in clinical units: kg/L as mg/dL, mol/L as mmol/L, exactly; None when absent or special."""
        if self.unit is None or not isinstance(self.concentration, Decimal):
            return None
        if self.unit is ConcentrationUnit.KG_PER_L:
            return self.concentration.scaleb(5), "mg/dL"  # 1 mg/dL = 1e-5 kg/L
        return self.concentration.scaleb(3), "mmol/L"


def parse_measurement(data: bytes) -> GlucoseMeasurement:
    """Decode a Glucose Measurement notification."""
    data = bytes(data)
    if len(data) < _MEAS_HEAD.size + DATE_TIME.size:
        raise FrameError(f"glucose measurement: {len(data)} bytes, at least 10 needed (flags, sequence, base time)")
    flags, sequence = _MEAS_HEAD.unpack_from(data)
    expected = 10
    if flags & MeasurementFlags.TIME_OFFSET:
        expected += 2
    if flags & MeasurementFlags.CONCENTRATION_TYPE_LOCATION:
        expected += 3
    if flags & MeasurementFlags.SENSOR_STATUS:
        expected += 2
    if len(data) != expected:
        raise FrameError(
            f"glucose measurement seq {sequence}: flags 0x{flags:02x} need {expected} bytes, got {len(data)}"
        )
    base_time = decode_date_time(data, 3, what=f"glucose measurement seq {sequence} base time")
    pos = 10
    time_offset = None
    if flags & MeasurementFlags.TIME_OFFSET:
        (time_offset,) = _INT16.unpack_from(data, pos)
        pos += 2
    concentration: Number | None = None
    unit = sample_type = sample_location = None
    if flags & MeasurementFlags.CONCENTRATION_TYPE_LOCATION:
        concentration = decode_sfloat(data, pos)
        unit = ConcentrationUnit.MOL_PER_L if flags & MeasurementFlags.UNITS_MOL_PER_L else ConcentrationUnit.KG_PER_L
        type_location = data[pos + 2]
        sample_type = _code(SampleType, type_location & 0x0F)
        sample_location = _code(SampleLocation, type_location >> 4)
        pos += 3
    status = None
    if flags & MeasurementFlags.SENSOR_STATUS:
        status = SensorStatus(_UINT16.unpack_from(data, pos)[0])
    return GlucoseMeasurement(
        flags=flags,
        sequence=sequence,
        base_time=base_time,
        time_offset_min=time_offset,
        concentration=concentration,
        unit=unit,
        sample_type=sample_type,
        sample_location=sample_location,
        sensor_status=status,
    )


def encode_measurement(m: GlucoseMeasurement, *, exponent: int | None = None) -> bytes:
    """Encode a measurement (emulated meter, tests). Flags come from which fields are set, plus CONTEXT_FOLLOWS."""
    flags = int(m.flags) & MeasurementFlags.CONTEXT_FOLLOWS
    body = b""
    if m.time_offset_min is not None:
        flags |= MeasurementFlags.TIME_OFFSET
        body += _INT16.pack(m.time_offset_min)
    if m.concentration is not None:
        flags |= MeasurementFlags.CONCENTRATION_TYPE_LOCATION
        if m.unit is ConcentrationUnit.MOL_PER_L:
            flags |= MeasurementFlags.UNITS_MOL_PER_L
        type_location = (int(m.sample_location or 0) << 4) | int(m.sample_type or 0)
        body += encode_sfloat(m.concentration, exponent) + bytes([type_location])
    if m.sensor_status is not None:
        flags |= MeasurementFlags.SENSOR_STATUS
        body += _UINT16.pack(int(m.sensor_status))
    return _MEAS_HEAD.pack(flags, m.sequence) + encode_date_time(m.base_time) + body


# ------------------------------------------------------------------------------------------------------ Context


class ContextFlags(IntFlag):
    """Glucose Measurement Context flags."""

    CARBOHYDRATE = 0x01
    MEAL = 0x02
    TESTER_HEALTH = 0x04
    EXERCISE = 0x08
    MEDICATION = 0x10
    MEDICATION_UNITS_LITERS = 0x20
    """Set: medication in liters; clear: in kilograms."""
    HBA1C = 0x40
    EXTENDED_FLAGS = 0x80


class CarbohydrateId(IntEnum):
    BREAKFAST = 1
    LUNCH = 2
    DINNER = 3
    SNACK = 4
    DRINK = 5
    SUPPER = 6
    BRUNCH = 7


class MealCode(IntEnum):
    PREPRANDIAL = 1
    POSTPRANDIAL = 2
    FASTING = 3
    CASUAL = 4
    BEDTIME = 5


class Tester(IntEnum):
    SELF = 1
    HEALTH_CARE_PROFESSIONAL = 2
    LAB_TEST = 3
    NOT_AVAILABLE = 15


class Health(IntEnum):
    MINOR_HEALTH_ISSUES = 1
    MAJOR_HEALTH_ISSUES = 2
    DURING_MENSES = 3
    UNDER_STRESS = 4
    NO_HEALTH_ISSUES = 5
    NOT_AVAILABLE = 15


class MedicationId(IntEnum):
    RAPID_ACTING_INSULIN = 1
    SHORT_ACTING_INSULIN = 2
    INTERMEDIATE_ACTING_INSULIN = 3
    LONG_ACTING_INSULIN = 4
    PRE_MIXED_INSULIN = 5


class MedicationUnit(Enum):
    KILOGRAMS = "kg"
    LITERS = "L"


EXERCISE_DURATION_OVERRUN = 0xFFFF
"""Exercise duration value meaning "longer than can be represented"."""

# Context field sizes in wire order: (flag, bytes)
_CONTEXT_FIELDS: tuple[tuple[ContextFlags, int], ...] = (
    (ContextFlags.EXTENDED_FLAGS, 1),
    (ContextFlags.CARBOHYDRATE, 3),
    (ContextFlags.MEAL, 1),
    (ContextFlags.TESTER_HEALTH, 1),
    (ContextFlags.EXERCISE, 3),
    (ContextFlags.MEDICATION, 3),
    (ContextFlags.HBA1C, 2),
)


@dataclass(frozen=True, slots=True)
class GlucoseContext:
    """One decoded Glucose Measurement Context (0x2A34)."""

    flags: int
    sequence: int
    extended_flags: int | None = None
    carbohydrate_id: CarbohydrateId | int | None = None
    carbohydrate_kg: Number | None = None
    meal: MealCode | int | None = None
    tester: Tester | int | None = None
    health: Health | int | None = None
    exercise_duration_s: int | None = None
    """Seconds; :data:`EXERCISE_DURATION_OVERRUN` means longer than representable."""
    exercise_intensity_pct: int | None = None
    medication_id: MedicationId | int | None = None
    medication: Number | None = None
    medication_unit: MedicationUnit | None = None
    hba1c_pct: Number | None = None


def parse_context(data: bytes) -> GlucoseContext:
    """Decode a Glucose Measurement Context notification."""
    data = bytes(data)
    if len(data) < _MEAS_HEAD.size:
        raise FrameError(f"glucose context: {len(data)} bytes, at least 3 needed (flags, sequence)")
    flags, sequence = _MEAS_HEAD.unpack_from(data)
    expected = 3 + sum(size for flag, size in _CONTEXT_FIELDS if flags & flag)
    if len(data) != expected:
        raise FrameError(f"glucose context seq {sequence}: flags 0x{flags:02x} need {expected} bytes, got {len(data)}")
    pos = 3
    values: dict[str, object] = {}
    if flags & ContextFlags.EXTENDED_FLAGS:
        values["extended_flags"] = data[pos]  # all bits reserved for future use by GLS 1.0.1
        pos += 1
    if flags & ContextFlags.CARBOHYDRATE:
        values["carbohydrate_id"] = _code(CarbohydrateId, data[pos])
        values["carbohydrate_kg"] = decode_sfloat(data, pos + 1)
        pos += 3
    if flags & ContextFlags.MEAL:
        values["meal"] = _code(MealCode, data[pos])
        pos += 1
    if flags & ContextFlags.TESTER_HEALTH:
        values["tester"] = _code(Tester, data[pos] & 0x0F)
        values["health"] = _code(Health, data[pos] >> 4)
        pos += 1
    if flags & ContextFlags.EXERCISE:
        values["exercise_duration_s"] = _UINT16.unpack_from(data, pos)[0]
        intensity = data[pos + 2]
        if intensity > 100:
            raise RecordError(f"glucose context seq {sequence}: exercise intensity {intensity}% is over 100")
        values["exercise_intensity_pct"] = intensity
        pos += 3
    if flags & ContextFlags.MEDICATION:
        values["medication_id"] = _code(MedicationId, data[pos])
        values["medication"] = decode_sfloat(data, pos + 1)
        values["medication_unit"] = (
            MedicationUnit.LITERS if flags & ContextFlags.MEDICATION_UNITS_LITERS else MedicationUnit.KILOGRAMS
        )
        pos += 3
    if flags & ContextFlags.HBA1C:
        values["hba1c_pct"] = decode_sfloat(data, pos)
    return GlucoseContext(flags=flags, sequence=sequence, **values)  # type: ignore[arg-type]


def encode_context(c: GlucoseContext) -> bytes:
    """Encode a context (emulated meter, tests). Flags come from which fields are set."""
    flags = 0
    body = b""
    if c.extended_flags is not None:
        flags |= ContextFlags.EXTENDED_FLAGS
        body += bytes([c.extended_flags])
    if c.carbohydrate_id is not None and c.carbohydrate_kg is not None:
        flags |= ContextFlags.CARBOHYDRATE
        body += bytes([int(c.carbohydrate_id)]) + encode_sfloat(c.carbohydrate_kg)
    if c.meal is not None:
        flags |= ContextFlags.MEAL
        body += bytes([int(c.meal)])
    if c.tester is not None or c.health is not None:
        flags |= ContextFlags.TESTER_HEALTH
        body += bytes([(int(c.health or 0) << 4) | int(c.tester or 0)])
    if c.exercise_duration_s is not None:
        flags |= ContextFlags.EXERCISE
        body += _UINT16.pack(c.exercise_duration_s) + bytes([c.exercise_intensity_pct or 0])
    if c.medication_id is not None and c.medication is not None:
        flags |= ContextFlags.MEDICATION
        if c.medication_unit is MedicationUnit.LITERS:
            flags |= ContextFlags.MEDICATION_UNITS_LITERS
        body += bytes([int(c.medication_id)]) + encode_sfloat(c.medication)
    if c.hba1c_pct is not None:
        flags |= ContextFlags.HBA1C
        body += encode_sfloat(c.hba1c_pct)
    return _MEAS_HEAD.pack(flags, c.sequence) + body


# ------------------------------------------------------------------------------------------------------ Feature


class GlucoseFeature(IntFlag):
    """Glucose Feature bits (11-15 reserved)."""

    LOW_BATTERY_DETECTION = 1 << 0
    SENSOR_MALFUNCTION_DETECTION = 1 << 1
    SENSOR_SAMPLE_SIZE = 1 << 2
    SENSOR_STRIP_INSERTION_ERROR_DETECTION = 1 << 3
    SENSOR_STRIP_TYPE_ERROR_DETECTION = 1 << 4
    SENSOR_RESULT_HIGH_LOW_DETECTION = 1 << 5
    SENSOR_TEMPERATURE_HIGH_LOW_DETECTION = 1 << 6
    SENSOR_READ_INTERRUPT_DETECTION = 1 << 7
    GENERAL_DEVICE_FAULT = 1 << 8
    TIME_FAULT = 1 << 9
    MULTIPLE_BOND = 1 << 10


def parse_feature(data: bytes) -> GlucoseFeature:
    """Decode the Glucose Feature characteristic (2 bytes); reserved bits are kept."""
    data = bytes(data)
    if len(data) != 2:
        raise FrameError(f"glucose feature: {len(data)} bytes, 2 expected")
    return GlucoseFeature(_UINT16.unpack(data)[0])


# --------------------------------------------------------------------------------------------------------- RACP


class RacpOpCode(IntEnum):
    REPORT_RECORDS = 0x01
    DELETE_RECORDS = 0x02
    ABORT = 0x03
    REPORT_NUMBER = 0x04
    NUMBER_RESPONSE = 0x05
    RESPONSE_CODE = 0x06


class RacpOperator(IntEnum):
    NULL = 0x00
    ALL = 0x01
    LESS_OR_EQUAL = 0x02
    GREATER_OR_EQUAL = 0x03
    WITHIN_RANGE = 0x04
    FIRST = 0x05
    LAST = 0x06


class RacpFilter(IntEnum):
    SEQUENCE_NUMBER = 0x01
    USER_FACING_TIME = 0x02


class RacpResponseCode(IntEnum):
    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_OPERATOR = 0x03
    OPERATOR_NOT_SUPPORTED = 0x04
    INVALID_OPERAND = 0x05
    NO_RECORDS_FOUND = 0x06
    ABORT_UNSUCCESSFUL = 0x07
    PROCEDURE_NOT_COMPLETED = 0x08
    OPERAND_NOT_SUPPORTED = 0x09


class GlsAttError(IntEnum):
    """ATT error codes a GLS server returns on a RACP write."""

    PROCEDURE_ALREADY_IN_PROGRESS = 0x80
    CCCD_IMPROPERLY_CONFIGURED = 0x81


_OPERAND_COUNT = {
    RacpOperator.NULL: 0,
    RacpOperator.ALL: 0,
    RacpOperator.FIRST: 0,
    RacpOperator.LAST: 0,
    RacpOperator.LESS_OR_EQUAL: 1,
    RacpOperator.GREATER_OR_EQUAL: 1,
    RacpOperator.WITHIN_RANGE: 2,
}
_FILTER_SIZE = {RacpFilter.SEQUENCE_NUMBER: 2, RacpFilter.USER_FACING_TIME: DATE_TIME.size}

FilterValue = int | datetime


def _filter_bytes(filter_type: RacpFilter, value: FilterValue) -> bytes:
    if filter_type is RacpFilter.SEQUENCE_NUMBER:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueError(f"sequence number filter needs an int 0..65535, got {value!r}")
        return _UINT16.pack(value)
    if not isinstance(value, datetime):
        raise ValueError(f"user facing time filter needs a datetime, got {value!r}")
    return encode_date_time(value)


def encode_racp(
    op: RacpOpCode,
    operator: RacpOperator = RacpOperator.ALL,
    *values: FilterValue,
    filter_type: RacpFilter = RacpFilter.SEQUENCE_NUMBER,
) -> bytes:
    """One RACP request: op code, operator, and (for <=, >=, range) filter type plus one or two values."""
    count = _OPERAND_COUNT[operator]
    if len(values) != count:
        raise ValueError(f"operator {operator.name} takes {count} filter values, got {len(values)}")
    if count == 0:
        return bytes([op, operator])
    return bytes([op, operator, filter_type]) + b"".join(_filter_bytes(filter_type, v) for v in values)


def encode_report_records(
    operator: RacpOperator = RacpOperator.ALL,
    *values: FilterValue,
    filter_type: RacpFilter = RacpFilter.SEQUENCE_NUMBER,
) -> bytes:
    """RACP "report stored records" (e.g. ``encode_report_records(GREATER_OR_EQUAL, 201)``)."""
    return encode_racp(RacpOpCode.REPORT_RECORDS, operator, *values, filter_type=filter_type)


def encode_report_number(
    operator: RacpOperator = RacpOperator.ALL,
    *values: FilterValue,
    filter_type: RacpFilter = RacpFilter.SEQUENCE_NUMBER,
) -> bytes:
    """RACP "report number of stored records"."""
    return encode_racp(RacpOpCode.REPORT_NUMBER, operator, *values, filter_type=filter_type)


def encode_delete_records(
    operator: RacpOperator = RacpOperator.ALL,
    *values: FilterValue,
    filter_type: RacpFilter = RacpFilter.SEQUENCE_NUMBER,
) -> bytes:
    """RACP "delete stored records" (the gateway never sends it; the emulator and tests do)."""
    return encode_racp(RacpOpCode.DELETE_RECORDS, operator, *values, filter_type=filter_type)


def encode_abort() -> bytes:
    """RACP "abort operation" (operator Null, no operand)."""
    return bytes([RacpOpCode.ABORT, RacpOperator.NULL])


def encode_number_response(count: int) -> bytes:
    """Server side: "number of stored records" response."""
    return bytes([RacpOpCode.NUMBER_RESPONSE, RacpOperator.NULL]) + _UINT16.pack(count)


def encode_response_code(request: int, code: RacpResponseCode | int) -> bytes:
    """Server side: response code for the request op code ``request``."""
    return bytes([RacpOpCode.RESPONSE_CODE, RacpOperator.NULL, request & 0xFF, int(code) & 0xFF])


@dataclass(frozen=True, slots=True)
class NumberResponse:
    """RACP "number of stored records" response."""

    count: int


@dataclass(frozen=True, slots=True)
class ResponseCode:
    """RACP response code to a request."""

    request: RacpOpCode | int
    code: RacpResponseCode | int

    @property
    def ok(self) -> bool:
        return self.code == RacpResponseCode.SUCCESS


RacpResponse = NumberResponse | ResponseCode


def parse_racp_response(data: bytes) -> RacpResponse:
    """Decode a RACP indication from the meter."""
    data = bytes(data)
    if len(data) < 2:
        raise FrameError(f"RACP response: {len(data)} bytes, at least 2 needed (op code, operator)")
    op, operator = data[0], data[1]
    if operator != RacpOperator.NULL:
        raise RecordError(f"RACP response op code 0x{op:02x}: operator must be Null, got 0x{operator:02x}")
    if op == RacpOpCode.NUMBER_RESPONSE:
        if len(data) != 4:
            raise FrameError(f"RACP number-of-records response: {len(data)} bytes, 4 expected")
        return NumberResponse(_UINT16.unpack_from(data, 2)[0])
    if op == RacpOpCode.RESPONSE_CODE:
        if len(data) != 4:
            raise FrameError(f"RACP response code: {len(data)} bytes, 4 expected")
        return ResponseCode(request=_code(RacpOpCode, data[2]), code=_code(RacpResponseCode, data[3]))
    raise RecordError(f"RACP: op code 0x{op:02x} is not a response a meter may send")


@dataclass(frozen=True, slots=True)
class RacpRequest:
    """A decoded RACP request (server side). Unknown codes stay ints for the server to answer."""

    op: RacpOpCode | int
    operator: RacpOperator | int
    filter_type: RacpFilter | int | None = None
    values: tuple[FilterValue, ...] = ()


def parse_racp_request(data: bytes) -> RacpRequest:
    """Decode a RACP request as a meter sees it.

    Raises FrameError when there is no op code/operator, RecordError (with ``.response`` set to the response code a
    meter should answer) when the operand does not fit the operator.
    """
    data = bytes(data)
    if len(data) < 2:
        raise FrameError(f"RACP request: {len(data)} bytes, at least 2 needed")
    op, operator = _code(RacpOpCode, data[0]), _code(RacpOperator, data[1])
    operand = data[2:]
    if not isinstance(operator, RacpOperator):
        return RacpRequest(op, operator)
    count = _OPERAND_COUNT[operator]
    if count == 0:
        if operand:
            raise _request_error(RacpResponseCode.INVALID_OPERAND, f"operator {operator.name} takes no operand")
        return RacpRequest(op, operator)
    if not operand:
        raise _request_error(RacpResponseCode.INVALID_OPERAND, f"operator {operator.name} needs a filter")
    filter_type = _code(RacpFilter, operand[0])
    if not isinstance(filter_type, RacpFilter):
        raise _request_error(RacpResponseCode.OPERAND_NOT_SUPPORTED, f"filter type 0x{operand[0]:02x} unknown")
    size = _FILTER_SIZE[filter_type]
    if len(operand) != 1 + count * size:
        raise _request_error(RacpResponseCode.INVALID_OPERAND, f"operand length {len(operand)} wrong")
    values: list[FilterValue] = []
    for i in range(count):
        at = 1 + i * size
        if filter_type is RacpFilter.SEQUENCE_NUMBER:
            values.append(_UINT16.unpack_from(operand, at)[0])
        else:
            values.append(decode_date_time(operand, at, what="RACP user facing time filter"))
    return RacpRequest(op, operator, filter_type, tuple(values))


class RacpRequestError(RecordError):
    """A RACP request a meter must refuse; ``response`` is the response code to send."""

    def __init__(self, message: str, response: RacpResponseCode) -> None:
        self.response = response
        super().__init__(message)


def _request_error(code: RacpResponseCode, message: str) -> RacpRequestError:
    return RacpRequestError(f"RACP request: {message}", code)


# ------------------------------------------------------------------------------- Current Time, Device Information


class AdjustReason(IntFlag):
    MANUAL_TIME_UPDATE = 0x01
    EXTERNAL_REFERENCE_TIME_UPDATE = 0x02
    CHANGE_OF_TIME_ZONE = 0x04
    CHANGE_OF_DST = 0x08


@dataclass(frozen=True, slots=True)
class CurrentTime:
    """Current Time (0x2A2B): the device's wall clock."""

    time: datetime
    day_of_week: int = 0
    """1 = Monday .. 7 = Sunday, 0 = unknown."""
    fractions256: int = 0
    adjust_reason: int = 0


def parse_current_time(data: bytes) -> CurrentTime:
    """Decode Current Time (10 bytes: Date Time, day of week, fractions256, adjust reason)."""
    data = bytes(data)
    if len(data) != 10:
        raise FrameError(f"current time: {len(data)} bytes, 10 expected")
    when = decode_date_time(data, 0, what="current time")
    day_of_week = data[7]
    if day_of_week > 7:
        raise RecordError(f"current time: day of week {day_of_week} is not 0..7")
    when = when.replace(microsecond=data[8] * 1_000_000 // 256)
    return CurrentTime(time=when, day_of_week=day_of_week, fractions256=data[8], adjust_reason=data[9])


def encode_current_time(when: datetime, adjust_reason: int = 0) -> bytes:
    """Current Time bytes for a naive datetime."""
    fractions = when.microsecond * 256 // 1_000_000
    return encode_date_time(when) + bytes([when.isoweekday(), fractions, adjust_reason])


def parse_dis_string(data: bytes, what: str) -> str:
    """A Device Information UTF-8 string (trailing NULs and blanks dropped)."""
    try:
        return bytes(data).decode("utf-8").rstrip("\x00 ").strip()
    except UnicodeDecodeError as exc:
        raise RecordError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") from None


# ---------------------------------------------------------------------------------- the download conversation


@dataclass(frozen=True, slots=True)
class RecordCount:
    """The meter announced how many records the report will carry."""

    count: int


@dataclass(frozen=True, slots=True)
class Measurement:
    """A measurement, with its context when the meter sent one with the same sequence number."""

    measurement: GlucoseMeasurement
    context: GlucoseContext | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """A context that matches no measurement (kept for the log; no reading is made from it)."""

    context: GlucoseContext


@dataclass(frozen=True, slots=True)
class Complete:
    """The report ended with "success"; ``received`` measurements arrived."""

    received: int


@dataclass(frozen=True, slots=True)
class NoRecords:
    """The meter holds no records matching the request."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """The meter confirmed the abort; ``received`` measurements had arrived."""

    received: int


@dataclass(frozen=True, slots=True)
class RacpFailed:
    """The meter refused a request (op code not supported, invalid operand...)."""

    request: RacpOpCode | int
    code: RacpResponseCode | int


Event = RecordCount | Measurement | Context | Complete | NoRecords | Aborted | RacpFailed


class DownloadState(Enum):
    IDLE = "idle"
    COUNTING = "counting"
    COUNTED = "counted"
    REPORTING = "reporting"
    ABORTING = "aborting"
    DONE = "done"
    ABORTED = "aborted"
    FAILED = "failed"


class Trigger(Enum):
    """What moves the conversation: the gateway's requests, and what the meter sends."""

    COUNT = "send report-number"
    REPORT = "send report-records"
    ABORT = "send abort"
    NUMBER = "number response"
    MEASUREMENT = "measurement"
    CONTEXT = "context"
    SUCCESS = "response success"
    NO_RECORDS = "response no records"
    ABORT_DONE = "response success to abort"
    REFUSED = "response error"


S, T = DownloadState, Trigger
TRANSITIONS: dict[tuple[DownloadState, Trigger], DownloadState] = {
    (S.IDLE, T.COUNT): S.COUNTING,
    (S.IDLE, T.REPORT): S.REPORTING,
    (S.COUNTING, T.NUMBER): S.COUNTED,
    (S.COUNTING, T.NO_RECORDS): S.DONE,
    (S.COUNTING, T.REFUSED): S.FAILED,
    (S.COUNTING, T.ABORT): S.ABORTING,
    (S.COUNTED, T.REPORT): S.REPORTING,
    (S.REPORTING, T.MEASUREMENT): S.REPORTING,
    (S.REPORTING, T.CONTEXT): S.REPORTING,
    (S.REPORTING, T.SUCCESS): S.DONE,
    (S.REPORTING, T.NO_RECORDS): S.DONE,
    (S.REPORTING, T.REFUSED): S.FAILED,
    (S.REPORTING, T.ABORT): S.ABORTING,
    # Values already on their way when we aborted are still real records: keep them.
    (S.ABORTING, T.MEASUREMENT): S.ABORTING,
    (S.ABORTING, T.CONTEXT): S.ABORTING,
    (S.ABORTING, T.NUMBER): S.ABORTING,
    (S.ABORTING, T.SUCCESS): S.ABORTING,
    (S.ABORTING, T.NO_RECORDS): S.ABORTING,
    (S.ABORTING, T.ABORT_DONE): S.ABORTED,
    (S.ABORTING, T.REFUSED): S.FAILED,
}
"""The whole RACP conversation. A (state, trigger) pair not listed is a protocol error."""
del S, T

FINAL_STATES = frozenset({DownloadState.DONE, DownloadState.ABORTED, DownloadState.FAILED})


RacpEvent = RecordCount | Complete | NoRecords | Aborted | RacpFailed
"""What the RACP conversation itself yields, whatever the service's records are."""
R = TypeVar("R")


class RacpDownload(Generic[R]):
    """The RACP conversation of one download of stored records, sans-I/O (h11 style), for every service that
    offers a Record Access Control Point 0x2A52 with the same op codes, operators and response codes (GLS 1.0.1,
    BLS 1.1): the requests, the answers, and the states of :data:`TRANSITIONS`. A service's subclass decodes its
    record notifications into events of type ``R``, moving the conversation with ``Trigger.MEASUREMENT``.

    ``since`` is the last sequence stored for this device (None on a first visit: all records).
    """

    service = "RACP"
    """Named in errors (``GLS download: ...``)."""

    def __init__(self, since: int | None = None, *, count_first: bool = True) -> None:
        self.since = since
        self.count_first = count_first
        self.state = DownloadState.IDLE
        self.received = 0
        self.count: int | None = None

    # -- requests -----------------------------------------------------------------------------------------
    def _filter(self) -> tuple[RacpOperator, tuple[int, ...]]:
        if self.since is None:
            return RacpOperator.ALL, ()
        # No "greater than" operator exists; ">= since+1" asks for exactly the new ones. At the top of the
        # 16-bit range ask ">= since" and let the store's identity drop the one duplicate.
        return RacpOperator.GREATER_OR_EQUAL, (min(self.since + 1, 0xFFFF),)

    def _move(self, trigger: Trigger) -> None:
        nxt = TRANSITIONS.get((self.state, trigger))
        if nxt is None:
            raise RecordError(f"{self.service} download: {trigger.value} is not expected while {self.state.value}")
        self.state = nxt

    def start(self) -> list[bytes]:
        """The first RACP write(s): report-number when ``count_first``, else report-records."""
        if not self.count_first:
            return self.report()
        self._move(Trigger.COUNT)
        operator, values = self._filter()
        return [encode_report_number(operator, *values)]

    def report(self) -> list[bytes]:
        """The report-records write (after the count, or straight from idle)."""
        self._move(Trigger.REPORT)
        operator, values = self._filter()
        return [encode_report_records(operator, *values)]

    def abort(self) -> list[bytes]:
        """The abort write, when a procedure is running; nothing otherwise."""
        if self.state not in (DownloadState.COUNTING, DownloadState.REPORTING):
            return []
        self._move(Trigger.ABORT)
        return [encode_abort()]

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    # -- what the device sends ----------------------------------------------------------------------------
    def receive_racp(self, data: bytes) -> list[R | RacpEvent]:
        """Feed one RACP indication; return the events it completes."""
        return self._racp(parse_racp_response(data))

    def _racp(self, response: RacpResponse) -> list[R | RacpEvent]:
        if isinstance(response, NumberResponse):
            if self.state is DownloadState.COUNTING and response.count == 0:
                self._move(Trigger.NO_RECORDS)
                self.count = 0
                return [RecordCount(0), NoRecords()]
            self._move(Trigger.NUMBER)
            self.count = response.count
            return [RecordCount(response.count)] if self.state is DownloadState.COUNTED else []
        events: list[R | RacpEvent]
        if response.request == RacpOpCode.ABORT:
            self._move(Trigger.ABORT_DONE if response.ok else Trigger.REFUSED)
            events = [*self._flush()]
            return [*events, Aborted(self.received) if response.ok else RacpFailed(response.request, response.code)]
        if response.ok:
            self._move(Trigger.SUCCESS)
            events = [*self._flush()]
            return events if self.state is DownloadState.ABORTING else [*events, Complete(self.received)]
        if response.code == RacpResponseCode.NO_RECORDS_FOUND:
            self._move(Trigger.NO_RECORDS)
            events = [*self._flush()]
            if self.state is DownloadState.DONE:
                self.count = self.count or 0
                events.append(NoRecords())
            return events
        self._move(Trigger.REFUSED)
        return [*self._flush(), RacpFailed(response.request, response.code)]

    def _flush(self) -> list[R]:
        """Records held back for a companion notification (a GLS context), handed over at the end."""
        return []

    def connection_lost(self) -> list[R]:
        """The link dropped: hand over a record still held back (nothing is lost)."""
        if not self.finished:
            self.state = DownloadState.FAILED
        return self._flush()


class GlsDownload(RacpDownload[Measurement | Context]):
    """The GLS download conversation: :class:`RacpDownload` with Glucose Measurement and Context notifications.

    ``since`` is the last sequence stored for this meter (None on a first visit: all records)::

        dl = GlsDownload(since=200)
        for data in dl.start():            # report-number request (count_first) or report-records
            await write_racp(data)
        events = dl.receive(char_uuid, data)   # for every notification / indication
        # RecordCount(n) -> await write_racp(dl.report()[0]) ; then Measurement..., Complete | NoRecords

    A measurement flagged "context follows" is held until its context (same sequence) arrives, or until the
    next measurement or the end of the report shows none is coming. ``receive`` raises ProtocolError for
    malformed bytes and for values that make no sense in the current state, leaving the state unchanged, so
    the caller may skip a bad notification and carry on.
    """

    service = "GLS"

    def __init__(self, since: int | None = None, *, count_first: bool = True) -> None:
        super().__init__(since, count_first=count_first)
        self._pending: GlucoseMeasurement | None = None

    def receive(self, char_uuid: str, data: bytes) -> list[Event]:
        """Feed one notification/indication; return the events it completes."""
        uuid = char_uuid.lower()
        if uuid == GLUCOSE_MEASUREMENT_UUID:
            measurement = parse_measurement(data)
            self._move(Trigger.MEASUREMENT)
            events: list[Event] = [*self._flush()]
            self.received += 1
            if measurement.context_follows:
                self._pending = measurement
            else:
                events.append(Measurement(measurement))
            return events
        if uuid == GLUCOSE_CONTEXT_UUID:
            context = parse_context(data)
            self._move(Trigger.CONTEXT)
            if self._pending is not None and self._pending.sequence == context.sequence:
                paired = Measurement(self._pending, context)
                self._pending = None
                return [paired]
            return [*self._flush(), Context(context)]
        if uuid == RACP_UUID:
            return self.receive_racp(data)
        raise RecordError(f"GLS download: notification from unexpected characteristic {char_uuid}")

    def _flush(self) -> list[Measurement | Context]:
        if self._pending is None:
            return []
        held, self._pending = self._pending, None
        return [Measurement(held)]


def receive_all(dl: GlsDownload, frames: Sequence[tuple[str, bytes]]) -> list[Event]:
    """Feed several notifications in order (tests, replay of recorded sessions)."""
    events: list[Event] = []
    for uuid, data in frames:
        events.extend(dl.receive(uuid, data))
    return events
