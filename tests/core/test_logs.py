"""Log lines through the real set-up (``setup_logging``): a value from outside cannot forge a second line.

A referral id, a file name or a meter serial can hold a newline, a CR, an ESC or a Unicode line separator. Both
formatters must write them as escapes, in the message and in ``extra`` fields, while tracebacks keep their lines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from gateway import logs
from gateway.logs import setup_logging

FORGED = "r-1\nERROR gateway.daemon: FORGED LINE"
HOSTILE = ["\n", "\r", "\x1b[2J", "\x00", "\x07", "\x7f", "\x85", "\x9b", "\u2028", "\u2029", "\x0b", "\x0c", "\x1e"]


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers: give pytest its own back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def emit(capsys: pytest.CaptureFixture[str], fmt: str) -> list[str]:
    setup_logging("INFO", fmt)
    log = logging.getLogger("gateway.forward.forwarder")
    log.info("acknowledged referral %s", FORGED)
    log.warning("referral %r refused", FORGED, extra={"referral_id": FORGED, "count": 3})
    log.info("ids: %s", "|".join(HOSTILE))
    try:
        raise ValueError("bad referral")
    except ValueError:
        log.exception("downlink message %s dropped", FORGED)
    return capsys.readouterr().err.splitlines()


@pytest.mark.usefixtures("restore_root_logger")
def test_text_lines_cannot_be_forged(capsys: pytest.CaptureFixture[str]) -> None:
    lines = emit(capsys, "text")
    assert not any(line.startswith("ERROR gateway.daemon") for line in lines), lines
    assert lines[0] == "INFO gateway.forward.forwarder: acknowledged referral r-1\\nERROR gateway.daemon: FORGED LINE"
    assert "referral_id=r-1\\nERROR gateway.daemon: FORGED LINE" in lines[1]
    assert "count=3" in lines[1]
    hostile = lines[2]
    assert not any(ch in hostile for ch in HOSTILE), repr(hostile)
    assert "\\x1b[2J" in hostile and "\\u2028" in hostile and "\\x85" in hostile and "\\x00" in hostile
    # The traceback follows on its own lines, unescaped.
    assert lines[3].startswith("ERROR gateway.forward.forwarder: downlink message r-1\\nERROR")
    assert lines[4] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad referral"


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_carry_no_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    lines = emit(capsys, "json")
    docs = [json.loads(line) for line in lines]  # one record per line: every line is a whole JSON document
    assert len(docs) == 4
    assert docs[0]["message"] == "acknowledged referral r-1\\nERROR gateway.daemon: FORGED LINE"
    assert docs[1]["referral_id"] == "r-1\\nERROR gateway.daemon: FORGED LINE"
    assert docs[1]["count"] == 3
    for doc in docs:
        for key, value in doc.items():
            if isinstance(value, str) and key != "exc":
                assert not any(ch in value for ch in HOSTILE), (key, value)
    # U+2028/U+2029 pass json.dumps(ensure_ascii=False) raw; they must not reach the line either.
    assert "\u2028" not in lines[2] and "\u2029" not in lines[2]
    assert docs[3]["exc"].startswith("Traceback (most recent call last):\n")


def test_escape_controls_leaves_ordinary_text_alone() -> None:
    text = "Zhang Wei 张伟 C:\\export\\img 001.jpg ✓"
    assert logs.escape_controls(text) == text
    assert logs.escape_controls("a\tb\rc") == "a\\tb\\rc"
