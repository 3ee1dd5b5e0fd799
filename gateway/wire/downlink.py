"""PURE: the platform's downlink messages (``ack``, ``cmd/referral``) as untrusted input.

Invariant, pinned by the property tests: **any bytes on a downlink topic give a value or a**
:class:`~gateway.errors.ContractError` **(with ``what``, ``where`` and a value-free ``reason``), never
anything else**: no ValueError from a 5,000-digit number, no RecursionError from 100,000 nested ``[``,
no string that SQLite cannot encode or that forges a log line. Each message is checked on its own, so
one bad message never touches its neighbours.

The checks, cheapest first, each before the next would cost anything:

1. **Size**: at most :data:`TOPIC_LIMITS` bytes per topic (an ack of 10,000 ids is ~360 KB; a referral
   with a 2,000-character note a few KB). The largest plus MQTT overhead is :data:`MAX_PACKET_SIZE`, which
   the link announces in its MQTT 5 CONNECT (Maximum Packet Size), so a broker never sends us more.
2. **UTF-8**, strictly (encoded surrogates are not UTF-8).
3. **JSON shape**, before and while parsing: nesting at most :data:`MAX_DEPTH` (measured by a linear scan
   *before* the recursive parser runs; skipped when the text holds no more opening brackets than that), number
   literals at most :data:`MAX_NUMBER_CHARS` characters (checked by the parser's hooks *before* the number is
   converted), no ``NaN``/``Infinity``, no duplicate keys (two parsers could disagree on which one counts).
4. **Schema** (``cg.ack/1``, ``cg.referral/1``), reported by JSON path and rule, never by value.
5. **Fields**: ids match :data:`ID_PATTERN`; text is free of control characters, lone surrogates and
   bidirectional overrides (``note`` may hold TAB, LF and CR); timestamps are strict RFC 3339
   (:func:`parse_rfc3339`).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from itertools import accumulate
from typing import Any, Final

from gateway.errors import ContractError
from gateway.records import Referral
from gateway.wire import contract

ACK_MAX_BYTES: Final = 512 * 1024
"""An ack of 10,000 ids (the schema's maximum) is ~360 KB."""
REFERRAL_MAX_BYTES: Final = 32 * 1024
"""A referral with the longest note (2,000 characters, each up to 12 bytes as a JSON surrogate-pair escape)."""
TOPIC_LIMITS: Final[dict[str, int]] = {contract.TOPIC_ACK: ACK_MAX_BYTES, contract.TOPIC_REFERRAL: REFERRAL_MAX_BYTES}
MAX_PACKET_SIZE: Final = ACK_MAX_BYTES + 4 * 1024
"""Announced to the broker in CONNECT: the largest downlink message plus topic, properties and header."""
MAX_DEPTH: Final = 8
"""Deepest nesting of arrays/objects accepted (the contract's documents need 2)."""
MAX_NUMBER_CHARS: Final = 32
"""Longest number literal accepted (the contract has no numbers downlink; 32 leaves room for any float)."""
MAX_ID_LENGTH: Final = 64
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
"""Referral and capture ids: ASCII letters, digits, ``.``, ``_``, ``:``, ``-``; starting with a letter or digit;
at most 64. So an id is one URL path segment (no ``/``, never ``.`` or ``..``: ``/referrals/<id>`` always
resolves) and one log token (no space, no newline)."""
YEAR_MIN: Final = 1970
YEAR_MAX: Final = 2999
"""Timestamps outside these years are refused: a grader's decision cannot be older than Unix time, and
the window keeps every conversion to the clinic's time zone inside what ``datetime`` can represent."""

# Strings and bracket tokens of a JSON text, in one linear pass: a string runs to its closing quote, or to
# the end of the text when unterminated (possessive, so no backtracking on hostile input).
_STRING = re.compile(r'"(?:[^"\\]++|\\[\s\S]?)*+(?:"|\Z)')
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Control characters (C0, DEL, C1), lone surrogates, line/paragraph separators and bidi overrides/isolates.
_BAD_IN_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# The same, less TAB, LF and CR: a grader's note may have lines.
_BAD_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NOT_PLAIN = re.compile(rb"[\x00-\x1f\x7f\\]")
"""A control byte, DEL or a backslash (the start of an escape) in the raw JSON."""
_MULTILINE_FIELDS: Final = frozenset({"note"})
_RFC3339 = re.compile(
    # [0-9], not \d: \d also matches other scripts' digits (U+FF12 full-width two), which RFC 3339 does not allow
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,32}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


# -- JSON under limits ---------------------------------------------------------------------------------
def json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text, brackets inside strings excluded; linear time.

    Runs before :func:`json.loads`, whose recursive parser would otherwise be the first to meet the depth.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _number_hook(what: str, convert: type[int] | type[float]) -> Any:
    def hook(literal: str) -> int | float:
        # Checked before conversion: int() of 5,000 digits raises ValueError (CPython's int_max_str_digits).
        if len(literal) > MAX_NUMBER_CHARS:
            raise ContractError(
                f"a number literal longer than {MAX_NUMBER_CHARS} characters", what=what, where="(json)"
            )
        value = convert(literal)
        if not math.isfinite(value):  # 1e99999 parses as inf
            raise ContractError("a number out of range", what=what, where="(json)")
        return value

    return hook


def _no_constants(what: str) -> Any:
    def hook(_name: str) -> Any:
        raise ContractError("NaN or Infinity (not JSON)", what=what, where="(json)")

    return hook


def _unique_keys(what: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ContractError("a key appears twice in one object", what=what, where="(json)")
        return obj

    return hook


def load_json(payload: bytes, *, what: str, limit: int) -> Any:
    """Parse untrusted JSON bytes under the size, depth and number limits; ContractError on any problem."""
    if len(payload) > limit:
        raise ContractError(f"{len(payload)} bytes, more than the {limit} allowed", what=what, where="(size)")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"not UTF-8 (byte {exc.start})", what=what, where="(encoding)") from None
    # Nesting is at most the number of opening brackets: a message with few of them (an ack has two) skips the scan.
    if text.count("[") + text.count("{") > MAX_DEPTH and (depth := json_depth(text)) > MAX_DEPTH:
        raise ContractError(f"nested {depth} levels deep, more than {MAX_DEPTH}", what=what, where="(json)")
    try:
        return json.loads(
            text,
            parse_int=_number_hook(what, int),
            parse_float=_number_hook(what, float),
            parse_constant=_no_constants(what),
            object_pairs_hook=_unique_keys(what),
        )
    except json.JSONDecodeError as exc:
        raise ContractError(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", what=what,
                            where="(json)") from None  # fmt: skip
    except (ValueError, RecursionError) as exc:  # the limits above make these unreachable; belt and braces
        raise ContractError(f"not acceptable JSON ({type(exc).__name__})", what=what, where="(json)") from None


# -- strings and ids -----------------------------------------------------------------------------------
def _bad_character(text: str, field: str) -> re.Match[str] | None:
    return (_BAD_IN_TEXT if field in _MULTILINE_FIELDS else _BAD_IN_LINE).search(text)


def plain_json(payload: bytes) -> bool:
    """True when no string parsed from ``payload`` can hold a character :func:`check_text` refuses: printable
    ASCII only, and no escapes. Every refused character is a control or a non-ASCII one, and can only arrive
    literally or as an escape; an ack of a thousand plain ids then skips the walk over its strings."""
    return payload.isascii() and _NOT_PLAIN.search(payload) is None


def check_text(doc: Any, *, what: str) -> None:
    """Refuse control characters, lone surrogates, line separators and bidi overrides in any string (keys
    too); ``note`` may hold TAB, LF and CR.

    Such characters forge log lines, reorder what the desk reads, or cannot be stored at all (SQLite
    refuses a lone surrogate). Iterative (the depth is bounded anyway); the JSON path of a problem is
    only built when there is one, since an ack holds up to 10,000 strings.
    """
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, item = stack.pop()
        problem: tuple[str, re.Match[str]] | None = None
        if isinstance(item, str):
            match = _bad_character(item, where.rsplit("/", 1)[-1])
            problem = None if match is None else (where, match)
        elif isinstance(item, dict):
            for key, child in item.items():
                match = _bad_character(key, "(key)")
                if match is not None:
                    problem = (f"{where}/(key)", match)
                    break
                # a key goes into the path (and so into logs) only when it is a plain name
                stack.append((f"{where}/{key}" if ID_PATTERN.fullmatch(key) else f"{where}/(key)", child))
        elif isinstance(item, list):
            for i, child in enumerate(item):
                if isinstance(child, str):
                    match = _bad_character(child, "")
                    if match is not None:
                        problem = (f"{where}/{i}", match)
                        break
                else:
                    stack.append((f"{where}/{i}", child))
        if problem is not None:
            path, match = problem
            kind = "a lone surrogate" if "\ud800" <= match.group() <= "\udfff" else "a control character"
            raise ContractError(f"{kind} (U+{ord(match.group()):04X}) at position {match.start()}",
                                what=what, where=path.lstrip("/") or "(root)")  # fmt: skip


def check_id(value: str, *, what: str, where: str) -> str:
    """``value`` when it matches :data:`ID_PATTERN`, else ContractError."""
    if not ID_PATTERN.fullmatch(value):
        raise ContractError(
            "not an id (1-64 of A-Z a-z 0-9 . _ : -, starting with a letter or digit)", what=what, where=where
        )
    return value


# -- timestamps ----------------------------------------------------------------------------------------
def parse_rfc3339(text: str, *, what: str = "timestamp", where: str = "") -> datetime:
    """A strict RFC 3339 ``date-time`` as an aware UTC datetime; ContractError with the reason otherwise.

    - ``T``/``Z`` in either case (RFC 3339 §5.6 allows lower case); an offset ``Z`` or ``±hh:mm``, required.
    - A fraction of any length, kept to the microsecond (truncated, never rounded up into the next second).
    - A leap second (``:60``) is accepted only where one can occur, the last minute of a UTC day (RFC 3339
      §5.7), and represented as the last microsecond of its second 59: it sorts after ``23:59:59`` and
      before midnight, which is all the desk needs (Python has no :60).
    - Years outside :data:`YEAR_MIN`..:data:`YEAR_MAX` (in UTC) are refused with that reason.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ContractError("not an RFC 3339 date-time (YYYY-MM-DDThh:mm:ss[.f](Z|±hh:mm))", what=what, where=where)
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction = match.group(7) or ""
    micro = int((fraction + "000000")[:6])
    if match.group(8):
        offset = timedelta(0)
    else:
        off_h, off_m = int(match.group(10)), int(match.group(11))
        if off_h > 23 or off_m > 59:
            raise ContractError("offset out of range", what=what, where=where)
        offset = (1 if match.group(9) == "+" else -1) * timedelta(hours=off_h, minutes=off_m)
    if not YEAR_MIN <= year <= YEAR_MAX:
        raise ContractError(f"year {year} outside {YEAR_MIN}-{YEAR_MAX}", what=what, where=where)
    leap = second == 60
    try:
        local = datetime(year, month, day, hour, minute, 59 if leap else second, 999_999 if leap else micro,
                         tzinfo=timezone(offset))  # fmt: skip
    except ValueError:
        raise ContractError("no such date or time of day", what=what, where=where) from None
    utc = local.astimezone(UTC)
    if leap and (utc.hour, utc.minute) != (23, 59):
        raise ContractError("a leap second (:60) outside the last minute of a UTC day", what=what, where=where)
    if not YEAR_MIN <= utc.year <= YEAR_MAX:
        raise ContractError(f"year {utc.year} (UTC) outside {YEAR_MIN}-{YEAR_MAX}", what=what, where=where)
    return utc


# -- the two downlink messages -------------------------------------------------------------------------
def _document(payload: bytes, *, what: str, topic: str, schema_id: str) -> dict[str, Any]:
    doc = load_json(payload, what=what, limit=TOPIC_LIMITS[topic])
    if not plain_json(payload):
        check_text(doc, what=what)
    contract.validate(schema_id, doc, what=what)
    if not isinstance(doc, dict):  # the schemas say "object"; this keeps the type checker honest
        raise ContractError("not a JSON object", what=what, where="(root)")
    return doc


def parse_ack(payload: bytes) -> list[str]:
    """The message ids a platform ``ack`` names, in order, each once; ContractError when it breaks the contract."""
    doc = _document(payload, what="ack", topic=contract.TOPIC_ACK, schema_id=contract.SCHEMA_ACK)
    return list(dict.fromkeys(doc["message_ids"]))


def parse_referral(payload: bytes) -> Referral:
    """A ``cmd/referral`` downlink as a Referral; ContractError when it breaks the contract."""
    what = "referral"
    doc = _document(payload, what=what, topic=contract.TOPIC_REFERRAL, schema_id=contract.SCHEMA_REFERRAL)
    capture_id = doc.get("capture_id")
    decided = doc.get("decided_at")
    return Referral(
        referral_id=check_id(doc["referral_id"], what=what, where="referral_id"),
        decision=doc["decision"],
        capture_id=None if capture_id is None else check_id(capture_id, what=what, where="capture_id"),
        patient_id=doc.get("patient_id"),
        note=doc.get("note"),
        grader=doc.get("grader"),
        decided_at=None if decided is None else parse_rfc3339(decided, what=what, where="decided_at"),
    )


def parse(relative_topic: str, payload: bytes) -> list[str] | Referral:
    """One downlink message by its topic (relative to the prefix): an ack's ids, or a Referral."""
    if relative_topic == contract.TOPIC_ACK:
        return parse_ack(payload)
    if relative_topic == contract.TOPIC_REFERRAL:
        return parse_referral(payload)
    raise ContractError("not a downlink topic of the contract", what="downlink", where="(topic)")
