"""Fuzz invariant of the GLS codec: any bytes -> values or ProtocolError, never anything else.

Checked with arbitrary bytes, and with valid frames (built from random field values) truncated, extended and with
one byte flipped, for every parser and for the GlsDownload state machine fed arbitrary notifications.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ProtocolError
from gateway.meters.codec import gls
from gateway.meters.codec.ieee11073 import decode_float, decode_sfloat, encode_sfloat

PARSERS: list[Callable[[bytes], Any]] = [
    gls.parse_measurement,
    gls.parse_context,
    gls.parse_feature,
    gls.parse_racp_response,
    gls.parse_racp_request,
    gls.parse_current_time,
    decode_sfloat,
    decode_float,
    lambda b: gls.parse_dis_string(b, "serial"),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _holds(parse: Callable[[bytes], Any], data: bytes) -> None:
    try:
        parse(data)
    except ProtocolError as exc:
        assert str(exc), "a ProtocolError must say what is wrong"


@FUZZ
@given(st.binary(max_size=40))
def test_any_bytes_give_values_or_protocol_error(data: bytes) -> None:
    for parse in PARSERS:
        _holds(parse, data)


datetimes = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)
sfloat_values = st.integers(min_value=-2045, max_value=2045).flatmap(
    lambda m: st.integers(min_value=-8, max_value=7).map(lambda e: Decimal(m).scaleb(e))
) | st.integers(min_value=-2048, max_value=2047).flatmap(  # a special's mantissa is a number off exponent 0
    lambda m: st.sampled_from([e for e in range(-8, 8) if e]).map(lambda e: Decimal(m).scaleb(e))
)


@st.composite
def measurements(draw: st.DrawFn) -> bytes:
    with_value = draw(st.booleans())
    m = gls.GlucoseMeasurement(
        flags=draw(st.sampled_from([0, gls.MeasurementFlags.CONTEXT_FOLLOWS])),
        sequence=draw(st.integers(0, 0xFFFF)),
        base_time=draw(datetimes),
        time_offset_min=draw(st.none() | st.integers(-32768, 32767)),
        concentration=draw(sfloat_values) if with_value else None,
        unit=draw(st.sampled_from(list(gls.ConcentrationUnit))) if with_value else None,
        sample_type=draw(st.integers(0, 15)),
        sample_location=draw(st.integers(0, 15)),
        sensor_status=draw(st.none() | st.integers(0, 0xFFFF).map(gls.SensorStatus)),
    )
    frame = gls.encode_measurement(m)
    decoded = gls.parse_measurement(frame)  # a valid frame decodes to what was encoded
    assert decoded.sequence == m.sequence and decoded.base_time == m.base_time
    assert decoded.concentration == m.concentration
    return frame


@st.composite
def contexts(draw: st.DrawFn) -> bytes:
    c = gls.GlucoseContext(
        flags=0,
        sequence=draw(st.integers(0, 0xFFFF)),
        extended_flags=draw(st.none() | st.integers(0, 255)),
        carbohydrate_id=draw(st.integers(0, 255)),
        carbohydrate_kg=draw(st.none() | sfloat_values),
        meal=draw(st.none() | st.integers(0, 255)),
        tester=draw(st.none() | st.integers(0, 15)),
        health=draw(st.integers(0, 15)),
        exercise_duration_s=draw(st.none() | st.integers(0, 0xFFFF)),
        exercise_intensity_pct=draw(st.integers(0, 100)),
        medication_id=draw(st.integers(0, 255)),
        medication=draw(st.none() | sfloat_values),
        medication_unit=draw(st.sampled_from(list(gls.MedicationUnit))),
        hba1c_pct=draw(st.none() | sfloat_values),
    )
    frame = gls.encode_context(c)
    assert gls.parse_context(frame).sequence == c.sequence
    return frame


racp_responses = st.one_of(
    st.integers(0, 0xFFFF).map(gls.encode_number_response),
    st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda t: gls.encode_response_code(*t)),
)
valid_frames = st.one_of(
    measurements().map(lambda f: (gls.parse_measurement, f)),
    contexts().map(lambda f: (gls.parse_context, f)),
    racp_responses.map(lambda f: (gls.parse_racp_response, f)),
    datetimes.map(lambda d: (gls.parse_current_time, gls.encode_current_time(d))),
    sfloat_values.map(lambda v: (decode_sfloat, encode_sfloat(v))),
)


@FUZZ
@given(valid_frames, st.data())
def test_valid_frames_truncated_extended_or_flipped(pair: tuple[Callable[[bytes], Any], bytes], data: Any) -> None:
    parse, frame = pair
    parse(frame)  # the valid frame itself decodes
    for cut in range(len(frame)):  # every truncation
        _holds(parse, frame[:cut])
    _holds(parse, frame + data.draw(st.binary(min_size=1, max_size=4)))
    index = data.draw(st.integers(0, len(frame) - 1))
    flipped = bytearray(frame)
    flipped[index] ^= data.draw(st.integers(1, 255))
    _holds(parse, bytes(flipped))


CHARS = [gls.GLUCOSE_MEASUREMENT_UUID, gls.GLUCOSE_CONTEXT_UUID, gls.RACP_UUID]


@FUZZ
@given(
    st.none() | st.integers(0, 0xFFFF),
    st.booleans(),
    st.lists(
        st.tuples(
            st.sampled_from(CHARS),
            st.one_of(st.binary(max_size=20), measurements(), contexts(), racp_responses),
        ),
        max_size=25,
    ),
)
def test_download_state_machine_takes_any_notifications(
    since: int | None, count_first: bool, frames: list[tuple[str, bytes]]
) -> None:
    dl = gls.GlsDownload(since, count_first=count_first)
    dl.start()
    for uuid, frame in frames:
        before = dl.state
        try:
            events = dl.receive(uuid, frame)
        except ProtocolError:
            assert dl.state is before  # a refused notification changes nothing
            continue
        for event in events:
            assert isinstance(event, gls.Event)
        if dl.state is gls.DownloadState.COUNTED:
            dl.report()
    for event in dl.connection_lost():
        assert isinstance(event, gls.Measurement)
