"""The three serial codecs against published vectors and their own inverse (pure: no ports, no asyncio)."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.errors import FrameError, LinkControlError, ProtocolError, RecordError
from gateway.meters.codec import freestyle_optium as optium
from gateway.meters.codec import lifescan_ascii as ultra2
from gateway.meters.codec import lifescan_binary as binary
from gateway.records import Meal, Unit

# -- OneTouch Ultra 2 (ASCII) --------------------------------------------------------------------------------


def test_ultra2_checksum_matches_published_vectors() -> None:
    # Vectors from glucometerutils' test_otultra2 (LifeScan's 16-bit sum).
    assert ultra2.checksum(b"T") == 0x0054
    assert ultra2.checksum(b'T "SAT","08/03/13","22:12:00   "') == 0x0608


def test_ultra2_line_roundtrip_and_checksum_error_carries_both_values() -> None:
    line = ultra2.encode_line('@ "12345678Y"')
    assert ultra2.parse_serial(ultra2.decode_line(line)) == "12345678Y"
    damaged = line.replace(b"1234", b"1334")
    with pytest.raises(FrameError) as info:
        ultra2.decode_line(damaged)
    assert info.value.wire is not None and info.value.calculated is not None
    assert info.value.wire != info.value.calculated


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"INVALID\r\n", FrameError),  # no checksum at all
        (b"% 13AZ\r\n", FrameError),  # checksum not hex
        (b"% 1337\r\n", FrameError),  # wrong checksum
    ],
)
def test_ultra2_bad_lines(line: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        ultra2.decode_line(line)


def test_ultra2_serial_must_end_in_y() -> None:
    with pytest.raises(RecordError, match="end in Y"):
        ultra2.parse_serial('@ "12345678O"')


def test_ultra2_dates() -> None:
    assert ultra2.parse_datetime('"SAT","08/03/13","22:12:00   "') == datetime(2013, 8, 3, 22, 12)
    ts = datetime(2026, 11, 23, 9, 41, 48)
    assert ultra2.parse_datetime(ultra2.format_datetime(ts)) == ts
    with pytest.raises(RecordError):
        ultra2.parse_datetime('"SAT","13/03/13","22:12:00   "')  # month 13


def test_ultra2_record_line_with_every_mark() -> None:
    rec = ultra2.parse_record('P "WED","11/23/26","09:41:48   ","C 123?","B","03", 00')
    assert rec == ultra2.DumpRecord(
        datetime(2026, 11, 23, 9, 41, 48), 123, True, True, Meal.BEFORE_MEAL, "mild_exercise"
    )
    assert ultra2.parse_record(ultra2.format_record(rec)) == rec
    header = ultra2.parse_header(ultra2.format_header(7, "12345678Y", Unit.MMOL_L))
    assert header == ultra2.DumpHeader(7, "12345678Y", Unit.MMOL_L)


def test_ultra2_record_errors_do_not_echo_values() -> None:
    with pytest.raises(RecordError) as info:
        ultra2.parse_record('P "WED","11/23/26","09:41:48   ","  987 ","X","03", 00')
    assert "987" not in str(info.value)


def test_ultra2_line_decoder_drops_endless_noise() -> None:
    dec = ultra2.LineDecoder()
    dec.receive_data(b"x" * (ultra2.MAX_LINE + 1))
    with pytest.raises(FrameError):
        dec.next_line()
    dec.receive_data(ultra2.encode_line("?P02"))
    assert dec.next_line() == ultra2.encode_line("?P02")


# -- OneTouch UltraEasy (binary) ----------------------------------------------------------------------------


def test_lifescan_crc_matches_published_vectors() -> None:
    # Vectors from glucometerutils' test_lifescan (CRC-CCITT seeded 0xFFFF).
    assert binary.crc_ccitt(b"\x02\x06\x06\x03") == 0x41CD
    assert binary.crc_ccitt(b"\x02\x06\x08\x03") == 0x62C2


def test_binary_frame_roundtrip_and_resync_after_noise() -> None:
    frame = binary.encode_frame(binary.REQ_VERSION, binary.LinkControl.SEQUENCE)
    assert frame[0] == binary.STX and frame[1] == len(frame) and frame[-3] == binary.ETX
    dec = binary.FrameDecoder()
    dec.receive_data(b"\xff\x00noise" + frame)
    got = dec.next_frame()
    assert got is not None and got.message == binary.REQ_VERSION and got.sequence
    assert dec.skipped == 7


def test_binary_bad_crc_is_a_frame_error_and_the_next_frame_still_decodes() -> None:
    good = binary.encode_frame(b"\x05\x06")
    bad = good[:-1] + bytes([good[-1] ^ 1])
    dec = binary.FrameDecoder()
    dec.receive_data(bad + good)
    with pytest.raises(FrameError, match="CRC"):
        dec.next_frame()
    frame = dec.next_frame()
    assert frame is not None and frame.message == b"\x05\x06"


def _meter_frame(message: bytes, *, s: bool, e: bool, ack: bool = False) -> binary.Frame:
    return binary.Frame(binary.control_bits(sequence=s, expect=e, ack=ack), message)


def test_binary_link_sequence_bits_acknowledgements_and_duplicates() -> None:
    link = binary.Link()
    opened = link.open()
    assert opened[2] == binary.LinkControl.DISCONNECT
    assert isinstance(link.receive_frame(_meter_frame(b"", s=False, e=False, ack=True)), binary.Ignored)
    assert isinstance(link.receive_frame(binary.Frame(binary.LinkControl(0x0C), b"")), binary.Acknowledged)
    first = link.request(binary.REQ_SERIAL)
    assert first[2] == 0x00  # S=0, E=0 on a fresh link
    assert link.retransmit() == first
    assert isinstance(link.receive_frame(_meter_frame(b"", s=False, e=True, ack=True)), binary.Acknowledged)
    response = _meter_frame(binary.serial_reply("SN1"), s=False, e=True)
    event = link.receive_frame(response)
    assert isinstance(event, binary.Response) and event.message == binary.serial_reply("SN1")
    assert event.ack[2] == 0x07  # ACK, S=1 (our next), E=1 (theirs next)
    duplicate = link.receive_frame(response)  # same bit again: a repeat (our ack was lost)
    assert isinstance(duplicate, binary.Duplicate) and duplicate.ack == event.ack
    assert link.request(binary.REQ_UNIT)[2] == 0x03  # the second request: S=1, E=1


def test_binary_link_takes_an_answer_whose_acknowledgement_was_lost() -> None:
    link = binary.Link()
    link.open()
    link.receive_frame(binary.Frame(binary.LinkControl(0x0C), b""))
    link.request(binary.REQ_VERSION)
    event = link.receive_frame(_meter_frame(binary.version_reply("02.00"), s=False, e=True))  # no ack seen
    assert isinstance(event, binary.Response) and link.send_sequence and not link.awaiting_ack
    assert isinstance(link.receive_frame(_meter_frame(b"", s=False, e=True, ack=True)), binary.Ignored)  # late ack


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (_meter_frame(b"", s=False, e=False, ack=True), "expect_receive"),  # the meter did not take our request
        (_meter_frame(b"", s=True, e=True, ack=True), "sequence"),  # its send bit is not the one we expect
        (binary.Frame(binary.LinkControl.DISCONNECT, b""), "disconnect"),  # it reset the link mid-exchange
    ],
)
def test_binary_link_out_of_step_is_a_link_control_error_with_the_bit(frame: binary.Frame, field: str) -> None:
    link = binary.Link()
    link.open()
    link.receive_frame(binary.Frame(binary.LinkControl(0x0C), b""))
    link.request(binary.REQ_SERIAL)
    with pytest.raises(LinkControlError) as caught:
        link.receive_frame(frame)
    assert caught.value.field == field and caught.value.control == int(frame.control)
    assert isinstance(caught.value, ProtocolError)


def test_binary_messages() -> None:
    ts = datetime(2026, 11, 23, 9, 41, 48)
    assert binary.parse_clock(binary.clock_reply(ts)) == ts
    assert binary.parse_record(binary.record_reply(ts, 123)) == (ts, 123)
    assert binary.parse_record_count(binary.count_reply(500)) == 500
    assert binary.parse_unit(binary.unit_reply(Unit.MMOL_L)) is Unit.MMOL_L
    assert binary.parse_version(binary.version_reply("02.00")) == "02.00"
    # version and build date travel as one 17-character string (Tidepool's UltraMini driver reads 9 + 8)
    assert binary.version_reply("P02.00.00 30/08/06") == b"\x05\x06\x11P02.00.0030/08/06"
    assert binary.parse_version(binary.version_reply("P02.00.00 30/08/06")) == "P02.00.00 30/08/06"
    assert binary.parse_serial(binary.success(b"C3XY0001\x00")) == "C3XY0001"
    assert binary.serial_reply("KPF1234ER") == b"\x05\x06KPF1234ER"  # no padding
    assert binary.record_request(binary.RECORD_COUNT_INDEX) == b"\x05\x1f\xf5\x01"
    with pytest.raises(RecordError, match="status"):
        binary.parse_record(b"\x05\x15")
    with pytest.raises(RecordError):
        binary.parse_record_count(binary.count_reply(501))


# -- FreeStyle Optium ---------------------------------------------------------------------------------------


def _dump(results: list[str]) -> bytes:
    head = optium.dump_head("ABCD123-45678", "1.22", datetime(2026, 6, 3, 9, 41, 48), len(results))
    body = head + "".join(r + "\r\n" for r in results).encode()
    return body + optium.dump_tail(body)


def test_optium_dates_including_june_and_july_spellings() -> None:
    assert optium.parse_clock("Nov  23 2026\t09:41:48") == datetime(2026, 11, 23, 9, 41, 48)
    assert optium.parse_dump_date("June 03 2026 09:41") == datetime(2026, 6, 3, 9, 41)
    assert optium.parse_dump_date("July 03 2026 09:41:05") == datetime(2026, 7, 3, 9, 41, 5)
    assert optium.format_dump_date(datetime(2026, 7, 3, 9, 41), seconds=False) == "July 03 2026 09:41"
    assert optium.format_dump_date(datetime(2026, 5, 3, 9, 41), seconds=False) == "May  03 2026 09:41"


def test_optium_dump_verifies_its_checksum() -> None:
    raw = _dump(["123  June 03 2026 09:41 G 0x00", "HI   May  02 2026 08:00 G 0x00", "003  May  01 2026 07:00 K 0x00"])
    dec = optium.ResponseDecoder()
    dec.receive_data(raw)
    response = dec.next_response(dump=True)
    assert response is not None
    dump = optium.parse_dump(*response)
    assert [(r.value_mg_dl, r.above_range, r.kind) for r in dump.results] == [
        (123, False, "G"),
        (500, True, "G"),
        (3, False, "K"),
    ]
    damaged = raw.replace(b"123  June", b"124  June")
    dec.receive_data(damaged)
    response = dec.next_response(dump=True)
    assert response is not None
    with pytest.raises(FrameError, match="checksum"):
        optium.parse_dump(*response)


def test_optium_checksum_is_a_16_bit_sum() -> None:
    assert optium.checksum(b"\r\n") == 0x17
    assert optium.checksum(b"\xff" * 300) == (0xFF * 300) & 0xFFFF


def test_optium_info_and_the_ignored_first_command() -> None:
    info = optium.Info("ABCD123-45678", "1.22", Unit.MMOL_L, datetime(2026, 11, 23, 9, 41, 48), 12)
    assert optium.parse_info(optium.format_info(info)) == info
    dec = optium.ResponseDecoder()
    dec.receive_data(b"\r\n")
    assert dec.next_response(dump=False) == (b"\r\n", [])
    assert optium.encode_command(optium.set_clock_command(datetime(2026, 11, 23, 9, 41))) == b"$tim,11,23,26,09,41\r\n"
