"""Time sources. The Pi has no real-time clock: whether the system clock is synchronised matters.

Ordering and retry timers never use wall-clock time (it can jump by years when NTP syncs late);
they use ``monotonic()`` and database row order.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Literal, Protocol

SyncCheck = Literal["adjtimex", "file", "assume_synced", "assume_unsynced"]

_MAX_ERROR_UNSYNCED_US = 16_000_000  # the kernel's NTP_PHASE_LIMIT: maxerror saturates here when unsynchronised


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """``struct timex`` from ``<sys/timex.h>`` (adjtimex(2)), 208 bytes on 64-bit Linux (aarch64, x86-64)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def read_timex() -> tuple[int, Timex] | None:
    """``adjtimex`` with ``modes = 0`` (read-only: needs no privilege, changes nothing); None when unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        tx = Timex()  # zero-initialised: modes = 0
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None
    return (state, tx) if state >= 0 else None


class Clock(Protocol):
    """What the gateway needs from time."""

    def utc_now(self) -> datetime:
        """Wall-clock time, aware, UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never jumps."""
        ...

    def is_synchronised(self) -> bool:
        """True when the wall clock is known to be right (NTP synchronised)."""
        ...


def kernel_clock_synchronised() -> bool:
    """Ask the kernel (adjtimex with modes=0, read-only) whether NTP has synchronised the clock.

    Same rule as systemd's ``ntp_synced()``, which timedated reports as ``NTPSynchronized`` (what IT sees in
    ``timedatectl``): synchronised while the kernel's maximum error is below 16 s. The STA_UNSYNC flag (return
    value TIME_ERROR) is not used on its own: systemd-timesyncd may leave it set on purpose so the kernel does
    not write the RTC. The maximum error grows by 0.5 ms/s without NTP updates, so the flag turns false
    about 9 hours after the last synchronisation. Returns False when it cannot tell.
    """
    reading = read_timex()
    return reading is not None and reading[1].maxerror < _MAX_ERROR_UNSYNCED_US


class SystemClock:
    """The real clock, with a configurable way of telling whether it is synchronised."""

    def __init__(self, sync_check: SyncCheck = "adjtimex", sync_file: Path | None = None) -> None:
        self._sync_check = sync_check
        self._sync_file = sync_file

    def utc_now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def is_synchronised(self) -> bool:
        match self._sync_check:
            case "adjtimex":
                return kernel_clock_synchronised()
            case "file":
                return self._sync_file is not None and self._sync_file.exists()
            case "assume_synced":
                return True
            case "assume_unsynced":
                return False


class FakeClock:
    """A clock for tests: set or advance wall time and monotonic time independently."""

    def __init__(self, now: datetime, *, synchronised: bool = True) -> None:
        self.now = now
        self.mono = 1000.0
        self.synchronised = synchronised

    def utc_now(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def is_synchronised(self) -> bool:
        return self.synchronised

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        from datetime import timedelta

        self.now += timedelta(seconds=seconds)
        self.mono += seconds


# -- the one time convention for people: the clinic's time zone, labelled ------------------------------------------
def zone_label(moment: datetime) -> str:
    """The UTC offset of an aware ``moment`` as a short label: ``UTC+8``, ``UTC-3:30``, ``UTC``.

    An offset rather than the zone's abbreviation: "CST" is China, Cuba and the US Central zone at once, and
    an offset reads the same in every language. ``gateway/web/static/cg.js`` (``CG.time``) writes the same.
    """
    offset = moment.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds() // 60)
    if minutes == 0:
        return "UTC"
    sign, minutes = ("+" if minutes > 0 else "-"), abs(minutes)
    hours, rest = divmod(minutes, 60)
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


def clinic_time(
    value: str | datetime | None, tz: tzinfo, *, date: bool = True, seconds: bool = False, empty: str = "\u2013"
) -> str:
    """A moment as people at the clinic read it, on every page and in every command's output:
    ``2026-11-23 10:40 UTC+8`` (``date=False``: ``10:40 UTC+8``; ``seconds=True``: ``10:40:12``, for photos
    taken a minute apart), in the clinic's time zone (``gateway.timezone``), always labelled.

    ``value`` is a datetime or a stored ISO 8601 text (the store writes them with their offset); a naive one
    is a wall-clock time already in the clinic's zone (a meter's own time), shown as it is.
    None or empty gives ``empty``; a text that is not a time is returned unchanged.
    """
    if value is None or value == "":
        return empty
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    local = moment.replace(tzinfo=tz) if moment.tzinfo is None else moment.astimezone(tz)
    clock = "%H:%M:%S" if seconds else "%H:%M"
    return f"{local.strftime(f'%Y-%m-%d {clock}' if date else clock)} {zone_label(local)}"
