"""IEEE 11073-20601 numbers (SFLOAT-Type, FLOAT-Type) and the Bluetooth Date Time field, as GATT uses them.

PURE: bytes in, values out; malformed input raises only :class:`~gateway.errors.ProtocolError` subclasses.

Supported:

- SFLOAT (16 bit: 4-bit signed exponent, 12-bit signed mantissa) and FLOAT (32 bit: 8-bit signed exponent,
  24-bit signed mantissa), decoded to an exact :class:`~decimal.Decimal` (``mantissa * 10**exponent``) or to
  one of the reserved :class:`Special` values: NaN, NRes (not at this resolution), +INF, -INF and the
  reserved code. IEEE 11073-20601 (section on SFLOAT-Type / FLOAT-Type) defines each special as one exact
  code with exponent 0 (SFLOAT 0x07FF NaN, 0x0800 NRes, 0x07FE +INF, 0x0802 -INF, 0x0801 reserved; FLOAT
  likewise with 24-bit mantissas): the same mantissa with any other exponent is an ordinary number
  (0xF7FE is 2046e-1 = 204.6). Encoders for both (used by the emulated meter and the tests).
- Date Time (org.bluetooth.characteristic.date_time, 7 bytes: year uint16, month, day, hours, minutes,
  seconds), as the Glucose Measurement's Base Time uses it. A zero year, month or day means "not known",
  which a measurement time cannot be: that is a RecordError, as is month 13 or hour 24.
"""

from __future__ import annotations

import struct
from datetime import datetime
from decimal import Decimal
from enum import Enum

from gateway.errors import FrameError, RecordError


class Special(Enum):
    """Reserved IEEE 11073 values: not numbers, but meaningful answers from a device."""

    NAN = "NaN"
    """Not a Number: the device has no valid value."""
    NRES = "NRes"
    """Not at this Resolution: the value cannot be represented with the available precision."""
    POS_INF = "+INF"
    NEG_INF = "-INF"
    RESERVED = "reserved"
    """Reserved for future use by the standard."""


Number = Decimal | Special

# Spec numbers, written once: the whole code of each special value (exponent 0, mantissa as listed). Only these
# exact codes are specials; a special's mantissa under a non-zero exponent is a finite number.
SFLOAT_SPECIALS: dict[int, Special] = {
    0x07FF: Special.NAN,
    0x0800: Special.NRES,
    0x07FE: Special.POS_INF,
    0x0802: Special.NEG_INF,
    0x0801: Special.RESERVED,
}
FLOAT_SPECIALS: dict[int, Special] = {
    0x007FFFFF: Special.NAN,
    0x00800000: Special.NRES,
    0x007FFFFE: Special.POS_INF,
    0x00800002: Special.NEG_INF,
    0x00800001: Special.RESERVED,
}
_SFLOAT_CODES = {v: k for k, v in SFLOAT_SPECIALS.items()}
_FLOAT_CODES = {v: k for k, v in FLOAT_SPECIALS.items()}

SFLOAT_MANTISSA_BITS = 12
SFLOAT_EXPONENT_RANGE = range(-8, 8)
SFLOAT_MANTISSA_MAX = 2045
"""Largest finite mantissa with exponent 0 (0x07FE and 0x07FF are +INF and NaN there)."""
SFLOAT_MANTISSA_MIN = -2045
"""Smallest finite mantissa with exponent 0 (0x0800..0x0802 are NRes, reserved and -INF there)."""
SFLOAT_MANTISSA_FULL = (-(1 << 11), (1 << 11) - 1)
"""Mantissa range with a non-zero exponent: every 12-bit value is a number."""
FLOAT_MANTISSA_BITS = 24
FLOAT_EXPONENT_RANGE = range(-128, 128)
FLOAT_MANTISSA_MAX = 0x7FFFFD
FLOAT_MANTISSA_MIN = -0x7FFFFD
FLOAT_MANTISSA_FULL = (-(1 << 23), (1 << 23) - 1)

DATE_TIME = struct.Struct("<HBBBBB")
"""Date Time: year (uint16, 0 = unknown), month, day (0 = unknown), hours, minutes, seconds."""
DATE_TIME_YEARS = range(1582, 10000)


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def decode_sfloat_raw(raw: int) -> Number:
    """Decode a 16-bit SFLOAT given as an unsigned integer (0..0xFFFF)."""
    if not 0 <= raw <= 0xFFFF:
        raise FrameError(f"SFLOAT raw value {raw} is not 16 bits")
    # Exact codes only: 0x07FF is NaN, but 0x17FF is 2047e1 and 0xF7FE is 204.6 (IEEE 11073-20601).
    if (special := SFLOAT_SPECIALS.get(raw)) is not None:
        return special
    mantissa = _signed(raw & 0x0FFF, SFLOAT_MANTISSA_BITS)
    exponent = _signed(raw >> SFLOAT_MANTISSA_BITS, 4)
    return Decimal(mantissa).scaleb(exponent)


def decode_float_raw(raw: int) -> Number:
    """Decode a 32-bit FLOAT given as an unsigned integer (0..0xFFFFFFFF)."""
    if not 0 <= raw <= 0xFFFFFFFF:
        raise FrameError(f"FLOAT raw value {raw} is not 32 bits")
    if (special := FLOAT_SPECIALS.get(raw)) is not None:
        return special
    mantissa = _signed(raw & 0xFFFFFF, FLOAT_MANTISSA_BITS)
    exponent = _signed(raw >> FLOAT_MANTISSA_BITS, 8)
    return Decimal(mantissa).scaleb(exponent)


def decode_sfloat(data: bytes, offset: int = 0) -> Number:
    """Decode the little-endian SFLOAT at ``data[offset:offset+2]``."""
    if len(data) < offset + 2:
        raise FrameError(f"SFLOAT at byte {offset} needs 2 bytes, {max(0, len(data) - offset)} left")
    return decode_sfloat_raw(int.from_bytes(data[offset : offset + 2], "little"))


def decode_float(data: bytes, offset: int = 0) -> Number:
    """Decode the little-endian FLOAT at ``data[offset:offset+4]``."""
    if len(data) < offset + 4:
        raise FrameError(f"FLOAT at byte {offset} needs 4 bytes, {max(0, len(data) - offset)} left")
    return decode_float_raw(int.from_bytes(data[offset : offset + 4], "little"))


def _fit(
    value: Decimal,
    exponents: range,
    bounds: tuple[int, int],
    full: tuple[int, int],
    *,
    exponent: int | None,
    kind: str,
) -> tuple[int, int]:
    """Find (mantissa, exponent) representing ``value`` exactly, preferring the most precise exponent.

    ``bounds`` is the finite mantissa range with exponent 0 (where the specials live), ``full`` the range
    with any other exponent.
    """
    candidates = [exponent] if exponent is not None else list(exponents)
    for exp in candidates:
        if exp not in exponents:
            raise ValueError(f"{kind} exponent {exp} outside {exponents.start}..{exponents.stop - 1}")
        lo, hi = bounds if exp == 0 else full
        mantissa = value.scaleb(-exp)
        if mantissa == mantissa.to_integral_value() and lo <= mantissa <= hi:
            return int(mantissa), exp
    with_exponent = "" if exponent is None else f" with exponent {exponent}"
    raise ValueError(f"{value} cannot be written exactly as a {kind}{with_exponent}")


def encode_sfloat_raw(value: Number | int | str, exponent: int | None = None) -> int:
    """The 16-bit code of ``value`` (exactly representable) or of a Special. Raises ValueError otherwise."""
    if isinstance(value, Special):
        return _SFLOAT_CODES[value]
    bounds = (SFLOAT_MANTISSA_MIN, SFLOAT_MANTISSA_MAX)
    mantissa, exp = _fit(
        Decimal(value), SFLOAT_EXPONENT_RANGE, bounds, SFLOAT_MANTISSA_FULL, exponent=exponent, kind="SFLOAT"
    )
    return ((exp & 0x0F) << SFLOAT_MANTISSA_BITS) | (mantissa & 0x0FFF)


def encode_float_raw(value: Number | int | str, exponent: int | None = None) -> int:
    """The 32-bit code of ``value`` (exactly representable) or of a Special. Raises ValueError otherwise."""
    if isinstance(value, Special):
        return _FLOAT_CODES[value]
    bounds = (FLOAT_MANTISSA_MIN, FLOAT_MANTISSA_MAX)
    mantissa, exp = _fit(
        Decimal(value), FLOAT_EXPONENT_RANGE, bounds, FLOAT_MANTISSA_FULL, exponent=exponent, kind="FLOAT"
    )
    return ((exp & 0xFF) << FLOAT_MANTISSA_BITS) | (mantissa & 0xFFFFFF)


def encode_sfloat(value: Number | int | str, exponent: int | None = None) -> bytes:
    """SFLOAT bytes (little-endian) for ``value``; see :func:`encode_sfloat_raw`."""
    return encode_sfloat_raw(value, exponent).to_bytes(2, "little")


def encode_float(value: Number | int | str, exponent: int | None = None) -> bytes:
    """FLOAT bytes (little-endian) for ``value``; see :func:`encode_float_raw`."""
    return encode_float_raw(value, exponent).to_bytes(4, "little")


def decode_date_time(data: bytes, offset: int = 0, *, what: str = "date-time") -> datetime:
    """Decode a 7-byte Date Time to a naive datetime (the device's own wall-clock time).

    Unknown fields (year, month or day 0) and impossible ones raise RecordError naming the field.
    """
    if len(data) < offset + DATE_TIME.size:
        raise FrameError(f"{what} at byte {offset} needs {DATE_TIME.size} bytes, {max(0, len(data) - offset)} left")
    year, month, day, hour, minute, second = DATE_TIME.unpack_from(data, offset)
    if year == 0 or month == 0 or day == 0:
        raise RecordError(f"{what} is not known (year {year}, month {month}, day {day})")
    if year not in DATE_TIME_YEARS:
        raise RecordError(f"{what}: year {year} outside {DATE_TIME_YEARS.start}..{DATE_TIME_YEARS.stop - 1}")
    try:
        return datetime(year, month, day, hour, minute, second)  # meter wall-clock time: naive on purpose
    except ValueError as exc:
        raise RecordError(
            f"{what}: impossible {year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d} ({exc})"
        ) from None


def encode_date_time(value: datetime) -> bytes:
    """The 7-byte Date Time of a (naive) datetime; microseconds are dropped."""
    return DATE_TIME.pack(value.year, value.month, value.day, value.hour, value.minute, value.second)
