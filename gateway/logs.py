"""Logging set-up for journald (stderr), text or JSON, with a filter that keeps patient data out.

Everyone else only does ``logging.getLogger(__name__)`` and logs ids and counts with lazy ``%s``
arguments. The filter is a safety net: structured ``extra`` fields whose names say they carry patient
data are replaced by ``[redacted]`` before any handler sees them.

One record is one line. Values in a record often come from outside (a referral id from the platform, a
file name from a camera's export folder, a meter's serial number), so both formatters escape control
characters in the rendered message and in every ``extra`` value (:func:`escape_controls`): a value holding
a newline cannot forge a second log line, and an ESC cannot repaint the terminal of whoever reads the log.
Tracebacks are added after escaping and keep their newlines.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 and C1 control characters, DEL, and the Unicode line and paragraph separators."""
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with control characters and line separators written as escapes (``\\n``, ``\\x1b``, ``\\u2028``).

    A backslash that was already there is left alone: the aim is one record per line, not a reversible encoding.
    """
    return _CONTROL.sub(_escape_one, text)


PHI_FIELDS = frozenset(
    {"patient_id", "patient", "value", "glucose", "mmol_l", "reading", "readings", "image", "payload", "note"}
    | {"systolic", "diastolic", "mean_arterial", "pulse", "pulse_bpm", "blood_pressure"}
)
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class PhiFilter(logging.Filter):
    """Redact ``extra`` attributes named like patient data."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in PHI_FIELDS & set(vars(record)):
            setattr(record, name, "[redacted]")
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...`` (journald adds the time)."""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{record.levelname} {record.name}: {escape_controls(record.getMessage())}"
        extras = " ".join(f"{k}={escape_controls(str(v))}" for k, v in sorted(_extras(record).items()))
        text = f"{base} {extras}" if extras else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": escape_controls(record.getMessage()),
        }
        doc.update(
            {
                k: v if isinstance(v, int | float | bool | None) else escape_controls(str(v))
                for k, v in _extras(record).items()
            }
        )
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once for the daemon or a CLI command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(PhiFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Chatty libraries stay at WARNING unless we debug.
    for noisy in ("waitress", "bleak", "dbus_fast", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)
