"""GLS codec against frames written out by hand from the Bluetooth GLS 1.0.1 / IEEE 11073-20601 specifications.

Each frame below is spelled byte by byte with its meaning, not produced by our encoder, so the decoder is checked
against the spec rather than against itself.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from gateway.errors import FrameError, ProtocolError, RecordError
from gateway.meters.codec import gls
from gateway.meters.codec.ieee11073 import (
    Special,
    decode_date_time,
    decode_float,
    decode_float_raw,
    decode_sfloat,
    decode_sfloat_raw,
    encode_float,
    encode_sfloat,
    encode_sfloat_raw,
)

M, C, R = gls.GLUCOSE_MEASUREMENT_UUID, gls.GLUCOSE_CONTEXT_UUID, gls.RACP_UUID

# --- SFLOAT: 4-bit exponent (high nibble), 12-bit mantissa, both two's complement; little-endian on the wire.


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0x07FF, Special.NAN),
        (0x0800, Special.NRES),
        (0x07FE, Special.POS_INF),
        (0x0802, Special.NEG_INF),
        (0x0801, Special.RESERVED),
        (0x17FF, Special.NAN),  # special mantissas are never finite, whatever the exponent
        (0x0072, Decimal(114)),  # exponent 0, mantissa 114
        (0xF072, Decimal("11.4")),  # exponent -1
        (0xB05A, Decimal("0.00090")),  # exponent -5, mantissa 90: 90 mg/dL in kg/L
        (0xC038, Decimal("0.0056")),  # exponent -4, mantissa 56: 5.6 mmol/L in mol/L
        (0x0FFF, Decimal(-1)),  # mantissa -1
        (0x0803, Decimal(-2045)),  # most negative finite mantissa
        (0x07FD, Decimal(2045)),  # most positive finite mantissa
        (0x8001, Decimal("1E-8")),  # exponent -8
        (0x7001, Decimal("1E+7")),  # exponent +7
        (0x0000, Decimal(0)),
    ],
)
def test_sfloat_decodes_spec_values(raw: int, expected: object) -> None:
    assert decode_sfloat_raw(raw) == expected
    assert decode_sfloat(raw.to_bytes(2, "little")) == expected


@pytest.mark.parametrize("special", list(Special))
def test_sfloat_and_float_specials_round_trip(special: Special) -> None:
    assert decode_sfloat(encode_sfloat(special)) is special
    assert decode_float(encode_float(special)) is special


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0x007FFFFF, Special.NAN),
        (0x00800000, Special.NRES),
        (0x007FFFFE, Special.POS_INF),
        (0x00800002, Special.NEG_INF),
        (0x00800001, Special.RESERVED),
        (0xFE000072, Decimal("1.14")),  # exponent -2, mantissa 114
        (0x00FFFFFF, Decimal(-1)),
    ],
)
def test_float_decodes_spec_values(raw: int, expected: object) -> None:
    assert decode_float_raw(raw) == expected


def test_sfloat_encoder_picks_an_exact_representation_and_refuses_the_impossible() -> None:
    assert encode_sfloat_raw(Decimal("0.00090"), -5) == 0xB05A
    assert decode_sfloat_raw(encode_sfloat_raw(Decimal("123.4"))) == Decimal("123.4")
    with pytest.raises(ValueError, match="cannot be written exactly"):
        encode_sfloat_raw(Decimal("12345.6"))


def test_sfloat_too_short_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="needs 2 bytes, 1 left"):
        decode_sfloat(b"\x01")


def test_date_time_unknown_and_impossible_fields() -> None:
    assert decode_date_time(bytes.fromhex("E80703010A1E00")) == datetime(2024, 3, 1, 10, 30)
    with pytest.raises(RecordError, match="not known"):
        decode_date_time(bytes.fromhex("00000301071E00"))  # year 0 = unknown
    with pytest.raises(RecordError, match="impossible 2024-13-01"):
        decode_date_time(bytes.fromhex("E8070D01071E00"))  # month 13
    with pytest.raises(RecordError, match="impossible"):
        decode_date_time(bytes.fromhex("E8070301181E00"))  # hour 24


# --- Glucose Measurement 0x2A18


def test_measurement_minimal_mg_dl() -> None:
    frame = bytes.fromhex(
        "02"  # flags: concentration + type/location present, kg/L
        "0100"  # sequence 1
        "E807 03 01 07 1E 00"  # 2024-03-01 07:30:00
        "5AB0"  # SFLOAT 0xB05A = 90e-5 kg/L = 90 mg/dL
        "11".replace(" ", "")  # sample location finger (high nibble 1), type capillary whole blood (low nibble 1)
    )
    m = gls.parse_measurement(frame)
    assert m.sequence == 1
    assert m.base_time == m.time == datetime(2024, 3, 1, 7, 30)
    assert m.unit is gls.ConcentrationUnit.KG_PER_L
    assert m.glucose() == (Decimal(90), "mg/dL")
    assert m.sample_type is gls.SampleType.CAPILLARY_WHOLE_BLOOD
    assert m.sample_location is gls.SampleLocation.FINGER
    assert m.time_offset_min is None and m.sensor_status is None and not m.context_follows


def test_measurement_every_flag_mmol_l() -> None:
    frame = bytes.fromhex(
        "1F"  # time offset, concentration, mol/L, sensor status, context follows
        "2A00"  # sequence 42
        "E9070C1F173B3B"  # 2025-12-31 23:59:59
        "C4FF"  # time offset -60 minutes
        "38C0"  # SFLOAT 0xC038 = 56e-4 mol/L = 5.6 mmol/L
        "24"  # location AST (2), type venous plasma (4)
        "0108"  # annunciation 0x0801: battery low + time fault
    )
    m = gls.parse_measurement(frame)
    assert m.sequence == 42
    assert m.time_offset_min == -60
    assert m.time == datetime(2025, 12, 31, 22, 59, 59)
    assert m.glucose() == (Decimal("5.6"), "mmol/L")
    assert m.sample_type is gls.SampleType.VENOUS_PLASMA
    assert m.sample_location is gls.SampleLocation.ALTERNATE_SITE_TEST
    assert m.sensor_status == gls.SensorStatus.BATTERY_LOW | gls.SensorStatus.TIME_FAULT
    assert gls.sensor_status_names(m.sensor_status) == ("battery_low", "time_fault")
    assert m.context_follows


def test_measurement_special_concentration_and_reserved_codes_are_kept() -> None:
    frame = bytes.fromhex("020700E80703010A0000FF07FB")  # NaN; location 15, type 11 (reserved)
    m = gls.parse_measurement(frame)
    assert m.concentration is Special.NAN and m.glucose() is None
    assert m.sample_type == 11 and gls.code_name(m.sample_type) == "reserved_11"
    assert m.sample_location is gls.SampleLocation.NOT_AVAILABLE


def test_measurement_without_concentration() -> None:
    m = gls.parse_measurement(bytes.fromhex("080300E80703010A00000400"))  # status only: sample too small
    assert m.concentration is None and m.glucose() is None
    assert m.sensor_status == gls.SensorStatus.SAMPLE_SIZE_INSUFFICIENT


@pytest.mark.parametrize(
    ("hexframe", "error", "text"),
    [
        ("02 0100 E80703010A00", FrameError, "at least 10"),  # 9 bytes
        ("02 0100 E80703010A0000 5AB0", FrameError, "need 13 bytes, got 12"),  # type/location byte missing
        ("02 0100 E80703010A0000 5AB0 11 00", FrameError, "need 13 bytes, got 14"),  # trailing byte
        ("02 0100 E8070D010A0000 5AB0 11", RecordError, "month"),  # month 13 (reported as impossible date)
        ("02 0100 0000030107 1E00 5AB0 11", RecordError, "not known"),  # year unknown
    ],
)
def test_measurement_malformed(hexframe: str, error: type[ProtocolError], text: str) -> None:
    with pytest.raises(error) as info:
        gls.parse_measurement(bytes.fromhex(hexframe.replace(" ", "")))
    assert text in str(info.value) or (text == "month" and "2024-13" in str(info.value))


def test_measurement_encoder_matches_hand_frame() -> None:
    m = gls.parse_measurement(bytes.fromhex("1F2A00E9070C1F173B3BC4FF38C0240108"))
    assert gls.encode_measurement(m, exponent=-4) == bytes.fromhex("1F2A00E9070C1F173B3BC4FF38C0240108")


# --- Glucose Measurement Context 0x2A34


def test_context_every_field() -> None:
    frame = bytes.fromhex(
        "FF"  # every field, medication in liters, extended flags
        "2A00"  # sequence 42
        "00"  # extended flags (all reserved)
        "01"
        "32D0"  # carbohydrate: breakfast, SFLOAT 0xD032 = 50e-3 kg
        "01"  # meal: preprandial
        "51"  # health 5 (no health issues) << 4 | tester 1 (self)
        "100E"
        "32"  # exercise 3600 s at 50 %
        "01"
        "0AD0"  # medication: rapid acting insulin, SFLOAT 0xD00A = 10e-3 L
        "41F0"  # HbA1c SFLOAT 0xF041 = 6.5 %
    )
    c = gls.parse_context(frame)
    assert c.sequence == 42 and c.extended_flags == 0
    assert c.carbohydrate_id is gls.CarbohydrateId.BREAKFAST and c.carbohydrate_kg == Decimal("0.050")
    assert c.meal is gls.MealCode.PREPRANDIAL
    assert c.tester is gls.Tester.SELF and c.health is gls.Health.NO_HEALTH_ISSUES
    assert (c.exercise_duration_s, c.exercise_intensity_pct) == (3600, 50)
    assert c.medication_id is gls.MedicationId.RAPID_ACTING_INSULIN
    assert c.medication == Decimal("0.010") and c.medication_unit is gls.MedicationUnit.LITERS
    assert c.hba1c_pct == Decimal("6.5")
    assert gls.parse_context(gls.encode_context(c)) == c  # the encoder may pick another exact exponent


def test_context_medication_in_kilograms_and_meal_only() -> None:
    c = gls.parse_context(bytes.fromhex("100500040AB0"))  # long acting insulin, 10e-5 kg
    assert c.medication_unit is gls.MedicationUnit.KILOGRAMS and c.medication == Decimal("0.00010")
    assert gls.parse_context(bytes.fromhex("02050005")).meal is gls.MealCode.BEDTIME


@pytest.mark.parametrize(
    ("hexframe", "error", "text"),
    [
        ("02 05", FrameError, "at least 3"),
        ("02 0500", FrameError, "need 4 bytes, got 3"),
        ("08 0500 100E 65", RecordError, "intensity 101%"),
    ],
)
def test_context_malformed(hexframe: str, error: type[ProtocolError], text: str) -> None:
    with pytest.raises(error, match=text):
        gls.parse_context(bytes.fromhex(hexframe.replace(" ", "")))


# --- Glucose Feature 0x2A51


def test_feature_bits() -> None:
    feature = gls.parse_feature(bytes.fromhex("0304"))  # 0x0403
    assert feature == (
        gls.GlucoseFeature.LOW_BATTERY_DETECTION
        | gls.GlucoseFeature.SENSOR_MALFUNCTION_DETECTION
        | gls.GlucoseFeature.MULTIPLE_BOND
    )
    assert gls.parse_feature(bytes.fromhex("FF07")) == gls.GlucoseFeature(0x07FF)  # every defined bit
    with pytest.raises(FrameError, match="2 expected"):
        gls.parse_feature(b"\x03")


# --- RACP 0x2A52


@pytest.mark.parametrize(
    ("frame", "hexpected"),
    [
        (gls.encode_report_records(), "0101"),
        (gls.encode_report_records(gls.RacpOperator.GREATER_OR_EQUAL, 201), "010301C900"),
        (gls.encode_report_records(gls.RacpOperator.LESS_OR_EQUAL, 7), "0102010700"),
        (gls.encode_report_records(gls.RacpOperator.WITHIN_RANGE, 10, 20), "0104010A001400"),
        (gls.encode_report_records(gls.RacpOperator.FIRST), "0105"),
        (gls.encode_report_records(gls.RacpOperator.LAST), "0106"),
        (
            gls.encode_report_records(
                gls.RacpOperator.GREATER_OR_EQUAL,
                datetime(2024, 3, 1, 7, 30),
                filter_type=gls.RacpFilter.USER_FACING_TIME,
            ),
            "010302E8070301071E00",
        ),
        (gls.encode_report_number(), "0401"),
        (gls.encode_report_number(gls.RacpOperator.GREATER_OR_EQUAL, 201), "040301C900"),
        (gls.encode_delete_records(), "0201"),
        (gls.encode_abort(), "0300"),
    ],
)
def test_racp_requests(frame: bytes, hexpected: str) -> None:
    assert frame == bytes.fromhex(hexpected)


def test_racp_request_encoder_refuses_wrong_operands() -> None:
    with pytest.raises(ValueError, match="takes 1 filter values, got 0"):
        gls.encode_report_records(gls.RacpOperator.GREATER_OR_EQUAL)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        gls.encode_report_records(gls.RacpOperator.GREATER_OR_EQUAL, 70000)


def test_racp_responses() -> None:
    assert gls.parse_racp_response(bytes.fromhex("0500F401")) == gls.NumberResponse(500)
    ok = gls.parse_racp_response(bytes.fromhex("06000101"))
    assert ok == gls.ResponseCode(gls.RacpOpCode.REPORT_RECORDS, gls.RacpResponseCode.SUCCESS) and ok.ok
    for code in gls.RacpResponseCode:
        response = gls.parse_racp_response(bytes([0x06, 0x00, 0x01, code]))
        assert isinstance(response, gls.ResponseCode) and response.code is code
    reserved = gls.parse_racp_response(bytes.fromhex("0600010A"))
    assert isinstance(reserved, gls.ResponseCode) and reserved.code == 0x0A


@pytest.mark.parametrize(
    ("hexframe", "error", "text"),
    [
        ("06", FrameError, "at least 2"),
        ("0500F4", FrameError, "4 expected"),
        ("060001", FrameError, "4 expected"),
        ("0100", RecordError, "not a response"),
        ("06010101", RecordError, "operator must be Null"),
    ],
)
def test_racp_response_malformed(hexframe: str, error: type[ProtocolError], text: str) -> None:
    with pytest.raises(error, match=text):
        gls.parse_racp_response(bytes.fromhex(hexframe))


def test_racp_request_parser_gives_the_response_code_to_send() -> None:
    request = gls.parse_racp_request(bytes.fromhex("0104010A001400"))
    assert request.operator is gls.RacpOperator.WITHIN_RANGE and request.values == (10, 20)
    with pytest.raises(gls.RacpRequestError) as info:
        gls.parse_racp_request(bytes.fromhex("010309"))  # filter type 9
    assert info.value.response is gls.RacpResponseCode.OPERAND_NOT_SUPPORTED
    with pytest.raises(gls.RacpRequestError) as info:
        gls.parse_racp_request(bytes.fromhex("010301C9"))  # operand one byte short
    assert info.value.response is gls.RacpResponseCode.INVALID_OPERAND


# --- Current Time and Device Information


def test_current_time() -> None:
    ct = gls.parse_current_time(bytes.fromhex("EA070B170A0F1E018000"))  # Monday, 128/256 s
    assert ct.time == datetime(2026, 11, 23, 10, 15, 30, 500000)
    assert ct.day_of_week == 1
    assert gls.parse_current_time(gls.encode_current_time(ct.time)).time == ct.time
    with pytest.raises(RecordError, match="day of week 9"):
        gls.parse_current_time(bytes.fromhex("EA070B170A0F1E090000"))


def test_dis_strings() -> None:
    assert gls.parse_dis_string(b"SN-123\x00\x00", "serial") == "SN-123"
    with pytest.raises(RecordError, match="serial: not UTF-8"):
        gls.parse_dis_string(b"\xff\xfe", "serial")


# --- the download conversation (GlsDownload)

MEAS_1 = bytes.fromhex("020100E80703010A00005AB011")  # seq 1, no context
MEAS_2_CTX = bytes.fromhex("120200E80703010B00005AB011")  # seq 2, context follows
CTX_2 = bytes.fromhex("02020001")  # seq 2, meal preprandial
MEAS_3_CTX = bytes.fromhex("120300E80703010C00005AB011")  # seq 3, context follows (but none comes)
MEAS_4 = bytes.fromhex("020400E80703010D00005AB011")


def test_download_count_then_report_pairs_contexts_by_sequence() -> None:
    dl = gls.GlsDownload(since=None)
    assert dl.start() == [bytes.fromhex("0401")]
    assert dl.receive(R, bytes.fromhex("05000400")) == [gls.RecordCount(4)]
    assert dl.state is gls.DownloadState.COUNTED
    assert dl.report() == [bytes.fromhex("0101")]
    events = gls.receive_all(
        dl, [(M, MEAS_1), (M, MEAS_2_CTX), (C, CTX_2), (M, MEAS_3_CTX), (M, MEAS_4), (R, bytes.fromhex("06000101"))]
    )
    measurements = [e for e in events if isinstance(e, gls.Measurement)]
    assert [e.measurement.sequence for e in measurements] == [1, 2, 3, 4]
    assert [e.context is not None for e in measurements] == [False, True, False, False]
    assert measurements[1].context is not None and measurements[1].context.meal is gls.MealCode.PREPRANDIAL
    assert events[-1] == gls.Complete(received=4)
    assert dl.state is gls.DownloadState.DONE and dl.finished


def test_download_since_asks_for_the_next_sequence() -> None:
    dl = gls.GlsDownload(since=200)
    assert dl.start() == [bytes.fromhex("040301C900")]  # >= 201
    assert gls.GlsDownload(since=200, count_first=False).start() == [bytes.fromhex("010301C900")]


def test_download_no_records_two_ways() -> None:
    dl = gls.GlsDownload(since=5)
    dl.start()
    assert dl.receive(R, bytes.fromhex("05000000")) == [gls.RecordCount(0), gls.NoRecords()]
    assert dl.finished
    dl = gls.GlsDownload(count_first=False)
    dl.start()
    assert dl.receive(R, bytes.fromhex("06000106")) == [gls.NoRecords()]


def test_download_abort_keeps_late_records() -> None:
    dl = gls.GlsDownload(count_first=False)
    dl.start()
    dl.receive(M, MEAS_1)
    assert dl.abort() == [bytes.fromhex("0300")]
    assert [type(e) for e in dl.receive(M, MEAS_2_CTX)] == []  # held for its context
    events = dl.receive(R, bytes.fromhex("06000301"))
    assert [type(e) for e in events] == [gls.Measurement, gls.Aborted]
    assert dl.state is gls.DownloadState.ABORTED


def test_download_refused_request() -> None:
    dl = gls.GlsDownload()
    dl.start()
    assert dl.receive(R, bytes.fromhex("06000402")) == [
        gls.RacpFailed(gls.RacpOpCode.REPORT_NUMBER, gls.RacpResponseCode.OP_CODE_NOT_SUPPORTED)
    ]
    assert dl.state is gls.DownloadState.FAILED


def test_download_connection_lost_hands_over_the_held_measurement() -> None:
    dl = gls.GlsDownload(count_first=False)
    dl.start()
    assert dl.receive(M, MEAS_3_CTX) == []
    events = dl.connection_lost()
    assert [e.measurement.sequence for e in events if isinstance(e, gls.Measurement)] == [3]


def test_download_unexpected_input_raises_and_leaves_state_alone() -> None:
    dl = gls.GlsDownload()
    with pytest.raises(RecordError, match="measurement is not expected while idle"):
        dl.receive(M, MEAS_1)
    assert dl.state is gls.DownloadState.IDLE
    dl.start()
    with pytest.raises(FrameError):
        dl.receive(M, MEAS_1[:-1])
    assert dl.state is gls.DownloadState.COUNTING
    with pytest.raises(RecordError, match="unexpected characteristic"):
        dl.receive(gls.GLUCOSE_FEATURE_UUID, b"\x00\x00")


def test_every_transition_in_the_table_is_reachable_from_idle() -> None:
    reachable = {gls.DownloadState.IDLE}
    changed = True
    while changed:
        changed = False
        for (state, _trigger), target in gls.TRANSITIONS.items():
            if state in reachable and target not in reachable:
                reachable.add(target)
                changed = True
    assert reachable == set(gls.DownloadState)
