"""Fuzz invariant of the Blood Pressure Service codec: any bytes -> values or ProtocolError, never anything else.

As for the Glucose codec (test_ble_codec_fuzz.py): arbitrary bytes into every parser; valid frames (built from
random field values) truncated at every offset, extended and with one byte flipped; stored records split into
segments at every offset and reassembled; and the RACP download fed arbitrary notifications.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ProtocolError
from gateway.meters.codec import bps, gls
from gateway.meters.codec.ieee11073 import Special
from gateway.records import PressureUnit

PARSERS: list[Callable[[bytes], Any]] = [
    bps.parse_measurement,
    bps.parse_intermediate_cuff_pressure,
    bps.parse_feature,
    bps.parse_record_segment,
    bps.parse_record,
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
sfloats = st.integers(min_value=-2045, max_value=2045).flatmap(
    lambda m: st.integers(min_value=-8, max_value=7).map(lambda e: Decimal(m).scaleb(e))
) | st.sampled_from(list(Special))


@st.composite
def measurements(draw: st.DrawFn) -> bytes:
    m = bps.BloodPressureMeasurement(
        flags=0,
        unit=draw(st.sampled_from(list(PressureUnit))),
        systolic=draw(sfloats),
        diastolic=draw(sfloats),
        mean_arterial=draw(sfloats),
        time_stamp=draw(st.none() | datetimes),
        pulse_rate=draw(st.none() | sfloats),
        user_id=draw(st.none() | st.integers(0, 255)),
        status=draw(st.none() | st.integers(0, 0xFFFF).map(bps.MeasurementStatus)),
    )
    frame = bps.encode_measurement(m)
    decoded = bps.parse_measurement(frame)  # a valid frame decodes to what was encoded
    assert (decoded.systolic, decoded.diastolic, decoded.mean_arterial) == (m.systolic, m.diastolic, m.mean_arterial)
    assert (decoded.time_stamp, decoded.user_id, decoded.unit) == (m.time_stamp, m.user_id, m.unit)
    return frame


valid_frames = st.one_of(
    measurements().map(lambda f: (bps.parse_measurement, f)),
    measurements().map(lambda f: (bps.parse_intermediate_cuff_pressure, f)),
    st.integers(0, 0xFFFF).map(lambda v: (bps.parse_feature, v.to_bytes(2, "little"))),
    st.tuples(st.integers(0, 0xFFFF), measurements(), st.booleans()).map(
        lambda t: (bps.parse_record, bps.encode_record(t[0], t[1], crc=t[2])[0][1:])
    ),
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


@FUZZ
@given(st.integers(0, 0xFFFF), measurements(), st.booleans(), st.integers(1, 30), st.integers(0, 63))
def test_valid_records_split_at_every_size_reassemble(
    sequence: int, frame: bytes, crc: bool, segment_size: int, counter: int
) -> None:
    segments = bps.encode_record(sequence, frame, crc=crc, segment_size=segment_size, counter=counter)
    assembler = bps.RecordAssembler()
    results = [assembler.feed(bps.parse_record_segment(s)) for s in segments]
    assert all(r is None for r in results[:-1])
    record = results[-1]
    assert record is not None and record.sequence == sequence
    assert record.measurement == bps.parse_measurement(frame)
    assert (record.e2e_crc is not None) == crc


CHARS = [bps.BLOOD_PRESSURE_RECORD_UUID, bps.RACP_UUID, bps.BLOOD_PRESSURE_MEASUREMENT_UUID]
racp_responses = st.one_of(
    st.integers(0, 0xFFFF).map(gls.encode_number_response),
    st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda t: gls.encode_response_code(*t)),
)
record_segments = st.tuples(st.integers(0, 0xFFFF), measurements(), st.integers(1, 12)).flatmap(
    lambda t: st.sampled_from(bps.encode_record(t[0], t[1], segment_size=t[2]))
)


@FUZZ
@given(
    st.none() | st.integers(0, 0xFFFF),
    st.booleans(),
    st.lists(
        st.tuples(st.sampled_from(CHARS), st.one_of(st.binary(max_size=24), record_segments, racp_responses)),
        max_size=25,
    ),
)
def test_download_state_machine_takes_any_notifications(
    since: int | None, count_first: bool, frames: list[tuple[str, bytes]]
) -> None:
    dl = bps.BpsDownload(since, count_first=count_first)
    dl.start()
    for uuid, frame in frames:
        before = dl.state
        try:
            events = dl.receive(uuid, frame)
        except ProtocolError:
            assert dl.state is before  # a refused notification changes nothing
            continue
        for event in events:
            assert isinstance(event, bps.BpsEvent)
        if dl.state is gls.DownloadState.COUNTED:
            dl.report()
    assert dl.connection_lost() == []
