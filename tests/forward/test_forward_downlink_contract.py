"""The pure downlink checks (gateway/wire/downlink.py): any bytes give a value or a ContractError with
``what``/``where``/``reason``, never anything else, and never a reason that quotes the value."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ContractError
from gateway.records import Referral
from gateway.wire import contract, downlink

BASE = {"schema": "cg.referral/1", "referral_id": "r-1", "decision": "refer_urgent", "patient_id": "P-0042"}


def ref(**fields: object) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


def refused(payload: bytes, parse=downlink.parse_referral) -> ContractError:
    with pytest.raises(ContractError) as info:
        parse(payload)
    return info.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T09:00:00Z", datetime(2026, 11, 23, 9, 0, tzinfo=UTC)),
        ("2026-11-23t09:00:00z", datetime(2026, 11, 23, 9, 0, tzinfo=UTC)),  # RFC 3339 §5.6: case-insensitive
        ("2026-11-23T17:00:00+08:00", datetime(2026, 11, 23, 9, 0, tzinfo=UTC)),
        ("2026-11-23T09:00:00.123456789Z", datetime(2026, 11, 23, 9, 0, 0, 123456, tzinfo=UTC)),  # truncated
        ("2026-12-31T23:59:60Z", datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),  # leap second
        ("2027-01-01T07:59:60+08:00", datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),  # same, local
        ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_rfc3339_accepts(text: str, expected: datetime) -> None:
    assert downlink.parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0000-11-23T09:00:00Z", "year 0 outside"),
        ("1969-12-31T23:59:59Z", "year 1969 outside"),
        ("1970-01-01T00:30:00+01:00", "year 1969 (UTC) outside"),
        ("3000-01-01T00:00:00Z", "year 3000 outside"),
        ("2026-11-23T09:00:60Z", "leap second"),  # not the last minute of a UTC day
        ("2026-02-30T09:00:00Z", "no such date"),
        ("2026-11-23T24:00:00Z", "no such date"),
        ("2026-11-23T09:00:00+24:00", "offset out of range"),
        ("2026-11-23T09:00:00", "not an RFC 3339"),  # no offset
        ("2026-11-23 09:00:00Z", "not an RFC 3339"),
        ("2026-11-23T09:00Z", "not an RFC 3339"),
        ("\uff12\uff10\uff12\uff16-11-23T09:00:00Z", "not an RFC 3339"),  # full-width digits (Python's \\d takes them)
    ],
)
def test_rfc3339_refuses_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        downlink.parse_rfc3339(text, what="referral", where="decided_at")
    assert reason in info.value.reason and info.value.where == "decided_at" and info.value.what == "referral"


def test_full_width_digits_are_not_digits() -> None:
    # Python's \d matches them; the pattern must not hand them to int()
    with pytest.raises(ContractError):
        downlink.parse_rfc3339("2026-11-23T09:00:00Z".replace("1", "\uff11"))


@pytest.mark.parametrize(
    ("payload", "where", "reason"),
    [
        (ref(note="\ud800"), "note", "lone surrogate"),
        (ref(grader="dr\x1b[31mred"), "grader", "control character"),
        (ref(patient_id="P-1\u202e"), "patient_id", "control character"),  # bidi override
        (ref(referral_id="a/b"), "referral_id", "wrong form"),
        (ref(referral_id=".."), "referral_id", "wrong form"),
        (ref(referral_id="x\nERROR gateway.daemon: FORGED LINE"), "referral_id", "control character"),
        (ref(capture_id="../../etc"), "capture_id", "wrong form"),
        (ref(decision="P-SECRET-9"), "decision", "not one of the allowed values"),
        (ref(extra="P-SECRET-9"), "(root)", "a field the schema does not know"),
        (ref(decided_at="0000-11-23T09:00:00Z"), "decided_at", "year 0"),
        (ref(note="n" * 2001), "note", "too long"),
        (json.dumps({"schema": "cg.referral/1", "referral_id": "r"}).encode(), "(root)", "missing (decision)"),
        (json.dumps({**BASE, "\nkey": 1}).encode(), "(key)", "control character"),
        (b'{"schema": "cg.referral/1", "referral_id": "a", "referral_id": "b"}', "(json)", "twice"),
        (b"\xed\xa0\x80", "(encoding)", "not UTF-8"),
        (b'{"a":' * 20, "(json)", "nested 20 levels"),
        (b"[" + b"9" * 5000 + b"]", "(json)", "number literal longer"),
        (b'{"a": NaN}', "(json)", "NaN"),
        (b'{"a": 1e99999}', "(json)", "out of range"),  # inf
        (b" " * (downlink.REFERRAL_MAX_BYTES + 1), "(size)", "more than"),
    ],
)
def test_referral_refusals_name_where_and_why_never_the_value(payload: bytes, where: str, reason: str) -> None:
    error = refused(payload)
    assert error.what == "referral" and error.where == where and reason in error.reason
    assert "P-SECRET" not in str(error) and "FORGED" not in str(error) and "\n" not in str(error)


@pytest.mark.parametrize(
    ("payload", "where", "reason"),
    [
        (b"[" * 100_000, "(json)", "nested 100000 levels"),
        (b'{"schema": "cg.ack/1", "message_ids": [' + b"1" * 5000 + b"]}", "(json)", "number literal longer"),
        (contract.ack_payload(["../../x"]), "message_ids/0", "wrong form"),
        (b'{"schema": "cg.ack/1", "message_ids": ["\\\\ud800"]}', "message_ids/0", "wrong form"),
        (b'{"schema": "cg.ack/1", "message_ids": ["\\ud800"]}', "message_ids/0", "lone surrogate"),
        (b" " * (downlink.ACK_MAX_BYTES + 1), "(size)", "more than"),
    ],
)
def test_ack_refusals(payload: bytes, where: str, reason: str) -> None:
    error = refused(payload, downlink.parse_ack)
    assert error.what == "ack" and error.where == where and reason in error.reason


@pytest.mark.parametrize("depth", range(downlink.MAX_DEPTH - 2, downlink.MAX_DEPTH + 3))
def test_nesting_past_the_limit_is_refused_however_few_brackets(depth: int) -> None:
    """The scan is skipped when the text has at most MAX_DEPTH opening brackets: never for a deeper one."""
    nested = ("[" * depth + "]" * depth).encode()
    for payload in (nested, b'{"a": "[]", "b": ' + nested + b"}"):
        levels = depth + payload.startswith(b"{")
        if levels > downlink.MAX_DEPTH:
            error = refused(payload, lambda p: downlink.load_json(p, what="t", limit=1000))
            assert error.where == "(json)" and f"nested {levels} levels" in error.reason
        else:
            assert downlink.load_json(payload, what="t", limit=1000) is not None


def test_note_keeps_its_lines() -> None:
    note = "Moderate NPDR.\r\nRebook\tin 4 weeks."
    assert downlink.parse_referral(ref(note=note)).note == note


def test_a_valid_referral_round_trips() -> None:
    referral = Referral(
        referral_id="r.2026-11:01_a", decision="no_dr", capture_id="c" * 32, patient_id="张三-0042",
        note="无明显病变", grader="dr-li", decided_at=datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
    )  # fmt: skip
    assert downlink.parse_referral(contract.referral_payload(referral)) == referral


def test_ack_ids_are_deduplicated_in_order_and_the_largest_ack_fits() -> None:
    ids = [f"{i:032x}" for i in range(10_000)]
    payload = contract.ack_payload(ids)
    assert len(payload) < downlink.ACK_MAX_BYTES < downlink.MAX_PACKET_SIZE
    assert downlink.parse_ack(payload) == ids
    assert downlink.parse_ack(contract.ack_payload([ids[1], ids[0], ids[1]])) == [ids[1], ids[0]]


def test_schema_and_code_share_the_id_pattern() -> None:
    for key in ("referral_id", "capture_id"):
        assert contract.schema(contract.SCHEMA_REFERRAL)["properties"][key]["pattern"] == (
            f"^{downlink.ID_PATTERN.pattern}$"
        )


def test_depth_scan_ignores_brackets_in_strings_and_is_linear_on_hostile_quotes() -> None:
    assert downlink.json_depth('{"a": "[[[[[[[[[[[[", "b": [[1]]}') == 3
    assert downlink.json_depth('"\\"' * 200_000) == 0  # unterminated escapes: one pass, no backtracking
    assert downlink.json_depth("[]" * 100_000) == 1


def test_unknown_topic() -> None:
    with pytest.raises(ContractError) as info:
        downlink.parse("cmd/reboot", b"{}")
    assert info.value.where == "(topic)"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.text(max_size=512).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_give_a_value_or_a_contract_error(payload: bytes) -> None:
    for topic in (contract.TOPIC_ACK, contract.TOPIC_REFERRAL):
        try:
            downlink.parse(topic, payload)
        except ContractError as exc:
            assert exc.what in ("ack", "referral") and exc.where and exc.reason


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*BASE, "capture_id", "note", "grader", "decided_at", "message_ids"]),
                       JSONISH, max_size=8))  # fmt: skip
def test_any_json_document_gives_a_value_or_a_contract_error(doc: dict[str, object]) -> None:
    payload = json.dumps(doc, allow_nan=True).encode()
    for topic in (contract.TOPIC_ACK, contract.TOPIC_REFERRAL):
        with contextlib.suppress(ContractError):
            downlink.parse(topic, payload)


@settings(max_examples=500, deadline=None)
@given(
    st.recursive(
        st.text(max_size=24) | st.integers(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    ),
    st.booleans(),
)
def test_a_plain_payload_holds_no_string_the_text_check_refuses(doc: object, ensure_ascii: bool) -> None:
    """The shortcut that skips the walk over an ack's strings (printable ASCII, no escapes) never skips one the
    walk would refuse; and a payload with any refused character is never plain."""
    payload = json.dumps(doc, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    refused_by_walk = False
    try:
        downlink.check_text(doc, what="ack")
    except ContractError:
        refused_by_walk = True
    if downlink.plain_json(payload):
        assert not refused_by_walk
    if refused_by_walk:
        assert not downlink.plain_json(payload)


def test_plain_json_examples() -> None:
    assert downlink.plain_json(contract.ack_payload(["m-1", "m-2"]))
    assert not downlink.plain_json(b'{"message_ids": ["m\\u0000"]}')  # an escape: the walk decides
    assert not downlink.plain_json('{"note": "\u202e"}'.encode())  # non-ASCII: the walk decides
    assert not downlink.plain_json(b'{"message_ids":\n["m-1"]}')  # a literal newline
    with pytest.raises(ContractError, match="control character"):
        downlink.parse_ack(b'{"schema": "cg.ack/1", "message_ids": ["m\\u0007"]}')
