"""Fuzz invariant of every serial codec: any bytes -> values or ProtocolError, never anything else.

Random bytes, and valid frames/lines/dumps with random mutations, go through each decoder and parser,
whole and a byte at a time; valid input split anywhere decodes to the same values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ProtocolError
from gateway.meters.codec import freestyle_optium as optium
from gateway.meters.codec import lifescan_ascii as ultra2
from gateway.meters.codec import lifescan_binary as binary
from gateway.meters.codec import taidoc
from gateway.records import Meal, Unit

FUZZ = settings(max_examples=300, deadline=None)

times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda t: t.replace(microsecond=0)
)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with a few bytes flipped, inserted or deleted."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif data:
            del data[pos]
    return bytes(data)


def only_protocol_errors(fn: Callable[[], object]) -> None:
    with contextlib.suppress(ProtocolError):
        fn()


# -- Ultra 2 --------------------------------------------------------------------------------------------------

ultra2_records = st.builds(
    ultra2.DumpRecord,
    meter_time=times,
    value_mg_dl=st.integers(0, 999),
    control_solution=st.booleans(),
    parity_error=st.booleans(),
    meal=st.sampled_from([None, Meal.BEFORE_MEAL, Meal.AFTER_MEAL]),
    comment=st.sampled_from(list(ultra2.COMMENT_CODES.values())),
)
ultra2_lines = ultra2_records.map(lambda r: ultra2.encode_line(ultra2.format_record(r)))


def _ultra2_all(data: bytes, chunk: int) -> None:
    dec = ultra2.LineDecoder()
    for i in range(0, len(data), chunk):
        dec.receive_data(data[i : i + chunk])
        while True:
            try:
                line = dec.next_line()
            except ProtocolError:
                continue
            if line is None:
                break
            for parse in (ultra2.parse_record, ultra2.parse_header, ultra2.parse_clock, ultra2.parse_serial,
                          ultra2.parse_unit, ultra2.parse_version):  # fmt: skip
                only_protocol_errors(lambda p=parse, ln=line: p(ultra2.decode_line(ln)))  # type: ignore[misc]


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated(ultra2_lines)), st.sampled_from([1, 7, 4096]))
def test_ultra2_any_bytes(data: bytes, chunk: int) -> None:
    _ultra2_all(data, chunk)


@FUZZ
@given(ultra2_records, st.integers(1, 60))
def test_ultra2_valid_lines_split_anywhere(record: ultra2.DumpRecord, split: int) -> None:
    line = ultra2.encode_line(ultra2.format_record(record))
    dec = ultra2.LineDecoder()
    dec.receive_data(line[:split])
    if split < len(line):
        assert dec.next_line() is None
    dec.receive_data(line[split:])
    raw = dec.next_line()
    assert raw is not None and ultra2.parse_record(ultra2.decode_line(raw)) == record


# -- UltraEasy ------------------------------------------------------------------------------------------------

binary_messages = st.one_of(
    st.builds(binary.record_reply, times.filter(lambda t: t.year < 2100), st.integers(0, 0xFFFF)),
    st.builds(binary.clock_reply, times),
    st.builds(binary.count_reply, st.integers(0, 500)),
    st.builds(binary.unit_reply, st.sampled_from(list(Unit))),
    st.binary(max_size=20),
)
binary_frames = st.builds(binary.encode_frame, binary_messages, st.integers(0, 0x1F).map(binary.LinkControl))


def _binary_all(data: bytes, chunk: int) -> None:
    dec, link = binary.FrameDecoder(), binary.Link()
    for i in range(0, len(data), chunk):
        dec.receive_data(data[i : i + chunk])
        while True:
            try:
                frame = dec.next_frame()
            except ProtocolError:
                continue
            if frame is None:
                break
            only_protocol_errors(lambda f=frame: link.receive_frame(f))  # type: ignore[misc]
            for parse in (binary.parse_record, binary.parse_clock, binary.parse_record_count, binary.parse_unit,
                          binary.parse_version, binary.parse_serial):  # fmt: skip
                only_protocol_errors(lambda p=parse, m=frame.message: p(m))  # type: ignore[misc]


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated(binary_frames)), st.sampled_from([1, 5, 4096]))
def test_binary_any_bytes(data: bytes, chunk: int) -> None:
    _binary_all(data, chunk)


@FUZZ
@given(st.lists(binary_frames, min_size=1, max_size=5), st.binary(max_size=10).filter(lambda b: 2 not in b))
def test_binary_valid_frames_after_noise_all_decode(frames: list[bytes], noise: bytes) -> None:
    dec = binary.FrameDecoder()
    for byte in noise + b"".join(frames):
        dec.receive_data(bytes([byte]))
    got = []
    while (frame := dec.next_frame()) is not None:
        got.append(binary.encode_frame(frame.message, frame.control))
    assert got == frames


# -- Optium ---------------------------------------------------------------------------------------------------

optium_results = st.builds(
    optium.Result,
    meter_time=times.map(lambda t: t.replace(second=0)),
    value_mg_dl=st.integers(0, 999),
    above_range=st.just(False),
    kind=st.sampled_from(["G", "K"]),
)


def _dump(results: list[optium.Result]) -> bytes:
    head = optium.dump_head("ABCD123-45678", "1.22", datetime(2026, 1, 1), len(results))
    body = head + "".join(optium.format_result(r) + "\r\n" for r in results).encode()
    return body + optium.dump_tail(body)


optium_dumps = st.lists(optium_results, max_size=6).map(_dump)


def _info(ts: datetime, count: int, unit: Unit) -> bytes:
    lines = optium.format_info(optium.Info("ABCD123-45678", "1.2", unit, ts, count))
    return "".join(line + "\r\n" for line in lines).encode()


optium_infos = st.builds(_info, times, st.integers(0, 999), st.sampled_from(list(Unit)))


def _optium_all(data: bytes, chunk: int, dump: bool) -> None:
    dec = optium.ResponseDecoder()
    for i in range(0, len(data), chunk):
        dec.receive_data(data[i : i + chunk])
        while True:
            try:
                response = dec.next_response(dump=dump)
            except ProtocolError:
                continue
            if response is None:
                break
            raw, lines = response
            if dump:
                only_protocol_errors(lambda r=raw, ls=lines: optium.parse_dump(r, ls))  # type: ignore[misc]
            elif lines:
                only_protocol_errors(lambda ls=lines: optium.parse_info(ls))  # type: ignore[misc]
                only_protocol_errors(lambda ls=lines: optium.parse_ok(ls))  # type: ignore[misc]


@FUZZ
@given(
    st.one_of(st.binary(max_size=400), mutated(optium_dumps), mutated(optium_infos)),
    st.sampled_from([1, 9, 4096]),
    st.booleans(),
)
def test_optium_any_bytes(data: bytes, chunk: int, dump: bool) -> None:
    _optium_all(data, chunk, dump)


@FUZZ
@given(st.lists(optium_results, max_size=6), st.integers(1, 200))
def test_optium_valid_dump_split_anywhere(results: list[optium.Result], split: int) -> None:
    raw = _dump(results)
    dec = optium.ResponseDecoder()
    dec.receive_data(raw[:split])
    response = dec.next_response(dump=True)
    if response is None:
        dec.receive_data(raw[split:])
        response = dec.next_response(dump=True)
    assert response is not None
    assert list(optium.parse_dump(*response).results) == results


# -- TaiDoc TD-42xx -------------------------------------------------------------------------------------------

taidoc_payloads = st.one_of(
    st.builds(lambda t: taidoc.encode_date(t), times.map(lambda t: t.replace(second=0))),
    st.builds(
        lambda v, tt, p, c: taidoc.value_payload(v, tt, parameter=p, code=c),
        st.integers(0, 0xFFFF),
        st.sampled_from(list(taidoc.TestType)),
        st.integers(0, 15),
        st.integers(0, 0x3FF),
    ),
    st.binary(min_size=4, max_size=4),
)
taidoc_frames = st.builds(
    lambda c, p, d: taidoc.encode_frame(c, p, direction=d),
    st.sampled_from(list(taidoc.Command)),
    taidoc_payloads,
    st.sampled_from([taidoc.HOST_END, taidoc.METER_END]),
)


def _taidoc_all(data: bytes, chunk: int) -> None:
    dec = taidoc.FrameDecoder()
    for i in range(0, len(data), chunk):
        dec.receive_data(data[i : i + chunk])
        while True:
            try:
                frame = dec.next_frame()
            except ProtocolError:
                continue
            if frame is None:
                break
            for parse in (taidoc.parse_value, taidoc.parse_count, taidoc.parse_model,
                          lambda f: taidoc.decode_date(f.payload), lambda f: taidoc.parse_serial(f, f)):  # fmt: skip
                only_protocol_errors(lambda p=parse, f=frame: p(f))  # type: ignore[misc]


@FUZZ
@given(
    st.one_of(st.binary(max_size=400), mutated(st.lists(taidoc_frames, max_size=6).map(b"".join))),
    st.sampled_from([1, 3, 4096]),
)
def test_taidoc_any_bytes(data: bytes, chunk: int) -> None:
    _taidoc_all(data, chunk)


@FUZZ
@given(
    st.lists(taidoc_frames, min_size=1, max_size=6), st.binary(max_size=10).filter(lambda b: 0x51 not in b), st.data()
)
def test_taidoc_valid_frames_after_noise_split_anywhere_all_decode(
    frames: list[bytes], noise: bytes, data: st.DataObject
) -> None:
    raw = noise + b"".join(frames)
    split = data.draw(st.integers(0, len(raw)))
    dec = taidoc.FrameDecoder()
    got = []
    for part in (raw[:split], raw[split:]):
        dec.receive_data(part)
        while (frame := dec.next_frame()) is not None:
            got.append(taidoc.encode_frame(frame.command, frame.payload, direction=frame.direction))
    assert got == frames
