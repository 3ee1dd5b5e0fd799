"""Blood Pressure Service codec against frames written out by hand from the Bluetooth SIG specifications.

Each frame below is spelled byte by byte with its meaning, not produced by our encoder, so the decoder is checked
against the specifications rather than against itself. References:

- BLS: Blood Pressure Service 1.1.1 (2022-01-18);
- GSS: GATT Specification Supplement, v10 (section numbers of the characteristics below):
  3.31 Blood Pressure Measurement (0x2A35), 3.32 Blood Pressure Feature (0x2A49), 3.33 Blood Pressure Record
  (0x2B36), 3.133 Intermediate Cuff Pressure (0x2A36), 3.70 Date Time, 3.198 Record Access Control Point;
- IEEE 11073-20601 SFLOAT-Type (the special values' exact codes).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from gateway.errors import FrameError, ProtocolError, RecordError
from gateway.meters.codec import bps, gls
from gateway.meters.codec.ieee11073 import Special
from gateway.records import PressureUnit, to_mmhg

REC, RACP = bps.BLOOD_PRESSURE_RECORD_UUID, bps.RACP_UUID

# GSS 3.31: Flags (uint8) | Systolic | Diastolic | Mean Arterial Pressure (SFLOAT each) | Time Stamp (Date Time,
# flag bit 1) | Pulse Rate (SFLOAT, bit 2) | User ID (uint8, bit 3) | Measurement Status (16 bits, bit 4).
MMHG_MINIMAL = bytes.fromhex("00 7800 5000 5d00")  # flags 0: mmHg; 120 / 80 / 93 (SFLOAT exponent 0)
MMHG_ALL_FIELDS = bytes.fromhex(
    "1e"  # flags: time stamp, pulse rate, user id, measurement status; units bit clear: mmHg
    " 7900 4f00 5e00"  # systolic 121, diastolic 79, mean 94
    " ea07 0b 17 09 29 05"  # 2026 (0x07EA) - 11 - 23 09:41:05
    " 4800"  # pulse rate 72 /min
    " 02"  # user 2
    " 0500"  # status: body movement (bit 0) + irregular pulse (bit 2)
)
KPA_FRAME = bytes.fromhex(
    "03"  # flags: kPa, time stamp
    " a0f0 6bf0 7df0"  # 16.0 / 10.7 / 12.5 kPa: SFLOAT exponent -1 (0xF), mantissas 160, 107, 125
    " ea07 0b 17 08 00 00"  # 2026-11-23 08:00:00
)


def test_minimal_measurement_mmhg() -> None:
    """GSS 3.31 with no optional field: the compound value alone, in mmHg."""
    m = bps.parse_measurement(MMHG_MINIMAL)
    assert (m.unit, m.systolic, m.diastolic, m.mean_arterial) == (PressureUnit.MMHG, 120, 80, 93)
    assert (m.time_stamp, m.pulse_rate, m.user_id, m.status) == (None, None, None, None)


def test_measurement_with_every_optional_field() -> None:
    """GSS 3.31: flags bits 1-4 each add their field, in this order."""
    m = bps.parse_measurement(MMHG_ALL_FIELDS)
    assert (m.systolic, m.diastolic, m.mean_arterial) == (121, 79, 94)
    assert m.time_stamp == datetime(2026, 11, 23, 9, 41, 5)
    assert m.pulse_rate == 72 and m.user_id == 2
    assert m.status == bps.MeasurementStatus.BODY_MOVEMENT | bps.MeasurementStatus.IRREGULAR_PULSE
    assert bps.status_names(m.status) == ("body_movement", "irregular_pulse")


def test_kpa_measurement_and_its_mmhg() -> None:
    """GSS 3.31 flags bit 0 set: kPa (the compound value's kPa variant); 1 kPa = 7.50062 mmHg."""
    m = bps.parse_measurement(KPA_FRAME)
    assert m.unit is PressureUnit.KPA
    assert (m.systolic, m.diastolic, m.mean_arterial) == (Decimal("16.0"), Decimal("10.7"), Decimal("12.5"))
    assert m.time_stamp == datetime(2026, 11, 23, 8, 0, 0)
    assert [to_mmhg(float(v), m.unit) for v in (m.systolic, m.diastolic, m.mean_arterial)] == [120.0, 80.3, 93.8]


ALL_BITS_5 = "improper_measurement_position"


@pytest.mark.parametrize(
    ("status", "names"),
    [
        (0x0000, ()),  # all fine: no movement, cuff fits, no irregular pulse, pulse in range, proper position
        (0x0001, ("body_movement",)),  # bit 0 Body Movement Detection
        (0x0002, ("cuff_too_loose",)),  # bit 1 Cuff Fit Detection
        (0x0004, ("irregular_pulse",)),  # bit 2 Irregular Pulse Detection
        (0x0008, ("pulse_rate_above_range",)),  # bits 3-4 Pulse Rate Range: 1 = exceeds upper limit
        (0x0010, ("pulse_rate_below_range",)),  # bits 3-4 = 2: less than lower limit
        (0x0018, ("pulse_rate_range_reserved",)),  # bits 3-4 = 3: reserved for future use
        (0x0020, ("improper_measurement_position",)),  # bit 5 Measurement Position Detection
        (0x0040, ("reserved_bit_6",)),  # bits 6-15 reserved: kept, named
        (0x8000, ("reserved_bit_15",)),
        (0x003F, ("body_movement", "cuff_too_loose", "irregular_pulse", "pulse_rate_range_reserved", ALL_BITS_5)),
    ],
)
def test_every_measurement_status_bit(status: int, names: tuple[str, ...]) -> None:
    frame = bytes.fromhex("10 7800 5000 5d00") + status.to_bytes(2, "little")  # flags: status only
    m = bps.parse_measurement(frame)
    assert m.status is not None and int(m.status) == status
    assert bps.status_names(m.status) == names


@pytest.mark.parametrize(
    ("raw", "special"),
    [
        ("ff07", Special.NAN),  # 0x07FF
        ("0008", Special.NRES),  # 0x0800
        ("fe07", Special.POS_INF),  # 0x07FE
        ("0208", Special.NEG_INF),  # 0x0802
        ("0108", Special.RESERVED),  # 0x0801
    ],
)
@pytest.mark.parametrize("field", ["systolic", "diastolic", "mean_arterial", "pulse_rate"])
def test_sfloat_special_in_every_field(raw: str, special: Special, field: str) -> None:
    """IEEE 11073-20601: each special is one exact code, in any SFLOAT field of the measurement."""
    fields = {"systolic": "7800", "diastolic": "5000", "mean_arterial": "5d00", "pulse_rate": "4800"}
    fields[field] = raw
    frame = bytes.fromhex(
        "04" + fields["systolic"] + fields["diastolic"] + fields["mean_arterial"] + fields["pulse_rate"]
    )
    m = bps.parse_measurement(frame)
    assert getattr(m, field) is special
    others = {name for name in fields if name != field}
    assert all(not isinstance(getattr(m, name), Special) for name in others)


def test_a_special_code_with_another_exponent_is_a_number() -> None:
    """Only the exact codes are specials: 0xF7FF is mantissa 2047, exponent -1 = 204.7 (not NaN)."""
    m = bps.parse_measurement(bytes.fromhex("00 fff7 5000 fef7"))
    assert m.systolic == Decimal("204.7") and m.mean_arterial == Decimal("204.6")


def test_intermediate_cuff_pressure() -> None:
    """GSS 3.133: the Measurement's layout; systolic carries the cuff pressure, diastolic and mean are NaN."""
    icp = bps.parse_intermediate_cuff_pressure(bytes.fromhex("00 9600 ff07 ff07"))
    assert (icp.unit, icp.cuff_pressure) == (PressureUnit.MMHG, 150)
    kpa = bps.parse_intermediate_cuff_pressure(bytes.fromhex("09 c8f0 ff07 ff07 01"))  # kPa, user 1
    assert (kpa.unit, kpa.cuff_pressure, kpa.user_id) == (PressureUnit.KPA, Decimal("20.0"), 1)


def test_feature_bits() -> None:
    """GSS 3.32: bits 0-5 (BLS 1.0), 6-8 (BLS 1.1); reserved bits are kept, not dropped."""
    every = bps.parse_feature(bytes.fromhex("3f00"))
    assert every == (
        bps.BloodPressureFeature.BODY_MOVEMENT_DETECTION
        | bps.BloodPressureFeature.CUFF_FIT_DETECTION
        | bps.BloodPressureFeature.IRREGULAR_PULSE_DETECTION
        | bps.BloodPressureFeature.PULSE_RATE_RANGE_DETECTION
        | bps.BloodPressureFeature.MEASUREMENT_POSITION_DETECTION
        | bps.BloodPressureFeature.MULTIPLE_BOND
    )
    assert int(bps.parse_feature(bytes.fromhex("c001"))) == 0x01C0  # E2E-CRC, UDS, user facing time
    assert int(bps.parse_feature(bytes.fromhex("0002"))) == 0x0200  # reserved bit 9 kept


@pytest.mark.parametrize(
    ("frame", "error", "text"),
    [
        ("00 7800 5000 00", FrameError, "at least 7 needed"),  # 6 bytes: the mean arterial pressure is cut
        ("02 7800 5000 5d00 ea07 0b 17", FrameError, "need 14 bytes, got 11"),  # time stamp flagged, cut
        ("00 7800 5000 5d00 00", FrameError, "need 7 bytes, got 8"),  # a byte no flag announces
        ("02 7800 5000 5d00 ea07 0d 01 00 00 00", RecordError, "month"),  # month 13
        ("02 7800 5000 5d00 0000 00 00 00 00 00", RecordError, "not known"),  # Date Time "unknown"
    ],
)
def test_malformed_measurements(frame: str, error: type[ProtocolError], text: str) -> None:
    with pytest.raises(error) as raised:
        bps.parse_measurement(bytes.fromhex(frame))
    assert text in str(raised.value)


def test_malformed_feature() -> None:
    with pytest.raises(FrameError):
        bps.parse_feature(b"\x3f")
    with pytest.raises(FrameError):
        bps.parse_feature(b"\x3f\x00\x00")


# --- Blood Pressure Record (GSS 3.33): Segmentation Header (bit 0 first, bit 1 last, bits 2-7 rolling counter),
# then Sequence Number (uint16), UUID (uint16), the recorded characteristic's value, E2E-CRC (0 or 2 bytes).


def test_e2e_crc_is_crc16_mcrf4xx() -> None:
    """The CRC catalogue's check value of CRC-16/MCRF4XX ("123456789" -> 0x6F91)."""
    assert bps.e2e_crc(b"123456789") == 0x6F91


def test_single_segment_record() -> None:
    segment = bytes.fromhex("03 0700 352a") + MMHG_ALL_FIELDS  # first + last, counter 0; seq 7; UUID 0x2A35
    assembler = bps.RecordAssembler()
    record = assembler.feed(bps.parse_record_segment(segment))
    assert record is not None and record.sequence == 7 and record.e2e_crc is None
    assert record.measurement == bps.parse_measurement(MMHG_ALL_FIELDS)


def test_record_in_two_segments_then_the_next_record() -> None:
    body = bytes.fromhex("2a00 352a") + KPA_FRAME  # seq 42
    first = bytes([0x01]) + body[:6]  # first segment, counter 0
    last = bytes([0x06]) + body[6:]  # last segment (0x02), counter 1 (1 << 2 = 0x04)
    following = bytes([0x0B]) + bytes.fromhex("2b00 352a") + MMHG_MINIMAL  # first + last, counter 2
    assembler = bps.RecordAssembler()
    assert assembler.feed(bps.parse_record_segment(first)) is None and assembler.pending
    record = assembler.feed(bps.parse_record_segment(last))
    assert record is not None and record.sequence == 42 and record.measurement.unit is PressureUnit.KPA
    nxt = assembler.feed(bps.parse_record_segment(following))
    assert nxt is not None and nxt.sequence == 43 and not assembler.pending


def test_record_with_e2e_crc() -> None:
    body = bytes.fromhex("0700 352a") + MMHG_MINIMAL
    crc = bps.e2e_crc(body)
    record = bps.parse_record(body + crc.to_bytes(2, "little"))
    assert record.e2e_crc == crc and record.measurement.systolic == 120
    with pytest.raises(FrameError, match="E2E-CRC"):
        bps.parse_record(body + (crc ^ 0x0100).to_bytes(2, "little"))


@pytest.mark.parametrize(
    ("segments", "text"),
    [
        (["06 0700 352a 00 7800 5000 50"], "does not follow no first segment"),  # a last segment alone
        (["01 0700 352a", "0a 00 7800 5000 50"], "segment 2 does not follow segment 0"),  # counter skips 1
    ],
)
def test_segments_out_of_order_are_a_record_error(segments: list[str], text: str) -> None:
    assembler = bps.RecordAssembler()
    with pytest.raises(RecordError, match=text):
        for segment in segments:
            assembler.feed(bps.parse_record_segment(bytes.fromhex(segment)))
    assert not assembler.pending  # the partial record is dropped


def test_a_new_first_segment_drops_the_open_record_but_keeps_itself() -> None:
    assembler = bps.RecordAssembler()
    assert assembler.feed(bps.parse_record_segment(bytes.fromhex("01 0700 352a 00"))) is None
    record = assembler.feed(bps.parse_record_segment(bytes.fromhex("07 0800 352a") + MMHG_MINIMAL))
    assert record is not None and record.sequence == 8
    assert len(assembler.dropped) == 1 and "began a new record" in assembler.dropped[0]


def test_record_of_another_characteristic_and_bad_lengths() -> None:
    with pytest.raises(RecordError, match="0x2B34 is not decoded"):
        bps.parse_record(bytes.fromhex("0700 342b") + MMHG_MINIMAL)  # an Enhanced BPM record
    with pytest.raises(FrameError, match="need 11 bytes"):
        bps.parse_record(bytes.fromhex("0700 352a") + MMHG_MINIMAL + b"\x00")  # one byte too many
    with pytest.raises(FrameError, match="at least 5"):
        bps.parse_record(bytes.fromhex("0700 352a"))
    with pytest.raises(FrameError, match="at least 2"):
        bps.parse_record_segment(b"\x03")


# --- RACP (GSS 3.198, the same procedures as the Glucose Service's): the codec is gls's, shared.


def test_racp_download_counts_reports_and_completes() -> None:
    dl = bps.BpsDownload(since=41)
    # report number of stored records (0x04), operator >= (0x03), filter sequence number (0x01), 42
    assert dl.start() == [bytes.fromhex("04 03 01 2a00")]
    assert dl.receive(RACP, bytes.fromhex("05 00 0200")) == [gls.RecordCount(2)]  # number response: 2
    assert dl.report() == [bytes.fromhex("01 03 01 2a00")]  # report stored records, same filter
    first = dl.receive(REC, bytes.fromhex("03 2a00 352a") + MMHG_MINIMAL)
    second = dl.receive(REC, bytes.fromhex("07 2b00 352a") + KPA_FRAME)
    assert [e.sequence for e in first + second if isinstance(e, bps.StoredMeasurement)] == [42, 43]
    assert dl.receive(RACP, bytes.fromhex("06 00 01 01")) == [gls.Complete(2)]  # response: success
    assert dl.finished


def test_racp_download_all_on_a_first_visit_and_no_records() -> None:
    dl = bps.BpsDownload()
    assert dl.start() == [bytes.fromhex("04 01")]  # report number, all records
    assert dl.receive(RACP, bytes.fromhex("05 00 0000")) == [gls.RecordCount(0), gls.NoRecords()]
    assert dl.finished


def test_racp_download_refuses_a_record_before_the_report_and_other_characteristics() -> None:
    dl = bps.BpsDownload()
    with pytest.raises(RecordError, match="not expected while idle"):
        dl.receive(REC, bytes.fromhex("03 0700 352a") + MMHG_MINIMAL)
    assert dl.state is gls.DownloadState.IDLE
    with pytest.raises(RecordError, match="unexpected characteristic"):
        dl.receive(bps.BLOOD_PRESSURE_MEASUREMENT_UUID, MMHG_MINIMAL)


def test_racp_download_link_lost_mid_record() -> None:
    dl = bps.BpsDownload(count_first=False)
    dl.start()
    assert dl.receive(REC, bytes.fromhex("01 0700 352a")) == []  # first segment of a record
    assert dl.connection_lost() == []  # a partial record is lost with the link (the cuff sends it again)
    assert dl.state is gls.DownloadState.FAILED
