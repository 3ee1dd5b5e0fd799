"""Open the store: access checks, quarantine of a corrupt file, pragmas and migrations.

Apart from :mod:`gateway.store.db` because a quarantine is recorded as an event (``store/events.py``), which
itself writes through ``db``: keeping the opening here leaves the store's modules without an import cycle.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import urllib.parse
from pathlib import Path

from sqlite_utils import Database

from gateway.clock import Clock, SystemClock
from gateway.config import user_name
from gateway.errors import StoreCannotOpen
from gateway.store.db import WAL_CHECKPOINT_BYTES, Origin, Store, translate_sqlite_errors
from gateway.store.events import add_event
from gateway.store.migrations import MIGRATIONS
from gateway.store.qc import queue_withheld

_logger = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
SIDECARS = ("-wal", "-shm")
"""Files SQLite keeps next to a WAL-mode database."""
QUARANTINE_KEY = "quarantined_file"
"""The kv key that names where a corrupt database was set aside (status page)."""


_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
"""Errors that mean "not allowed" (permissions, owner, read-only), never "damaged"."""


def _denied(path: Path, access: str, reason: str) -> StoreCannotOpen:
    try:
        st = os.stat(path)
        owner, mode = user_name(st.st_uid), stat.S_IMODE(st.st_mode)
    except OSError:
        owner, mode = "unknown", 0
    return StoreCannotOpen(
        path=path, owner=owner, mode=mode, access=access, user=user_name(os.geteuid()), reason=reason
    )


def _why_not(path: Path) -> str:
    """The reason ``os.access`` does not give: a read-only file system, or plain permissions."""
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "Read-only file system" if read_only else "Permission denied"


def check_directory(directory: Path) -> None:
    """Create ``directory`` if needed; raise StoreCannotOpen unless we may enter it and create files in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in _DENIED:
            raise
        existing = next(p for p in directory.parents if p.exists())
        raise _denied(existing, "create files in", exc.strerror or "Permission denied") from None
    for access, bits in (("enter", os.X_OK), ("create files in", os.W_OK | os.X_OK)):
        if not os.access(directory, bits):
            raise _denied(directory, access, _why_not(directory))


def check_store_access(path: Path) -> None:
    """Raise :class:`StoreCannotOpen` unless this process may use the database at ``path``.

    SQLite in WAL mode needs to create files next to the database (``-wal``, ``-shm``) and to read and write
    the database and those files where they exist. ``access(2)`` answers for ACLs and read-only mounts too,
    and, unlike opening and closing the files, cannot drop the POSIX locks SQLite holds on them for another
    connection of this process. A missing database is fine: it is created.
    """
    check_directory(path.parent)
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SIDECARS)):
        if not file.exists() or os.access(file, os.R_OK | os.W_OK):
            continue
        access = "write" if os.access(file, os.R_OK) else "read"
        raise _denied(file, access, _why_not(file))


def _is_corrupt(path: Path) -> bool:
    """True when the file opens but is not an SQLite database or fails SQLite's quick integrity check.

    Any other failure (I/O error, busy, cannot open) is raised, never taken for corruption: moving a good
    database aside would strand its unsent readings and photos.
    """
    with path.open("rb") as fh:
        if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            return True
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)
        try:
            problems = conn.execute("PRAGMA quick_check(1)").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return True
        raise
    return problems != [("ok",)]


def quarantine(path: Path, stamp: str) -> Path:
    """Move a corrupt database (and its WAL/SHM) aside, keeping its bytes; return the new path."""
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, target)
    for suffix in SIDECARS:
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    return target


def open_store(
    path: Path | None,
    image_dir: Path,
    *,
    clock: Clock | None = None,
    origin: Origin | None = None,
    min_free_mb: int = 0,
    low_disk_warn_mb: int = 0,
    max_page_count: int | None = None,
) -> Store:
    """Open (creating if needed) the store at ``path`` (None: in memory, for tests).

    Two different failures, told apart before anything is touched:

    - **cannot open** (permissions, owner, read-only file or directory, WAL/SHM files we may not write):
      :class:`StoreCannotOpen` names the file, its owner and mode; the data stays where it is.
    - **corrupt** (the file opens but is not a database, or SQLite's quick check fails): the file is
      quarantined next to itself, a fresh database is started, and the fact is recorded as an error event
      (status page and events topic), so the daemon neither crash-loops nor silently forgets.
    """
    clock = clock or SystemClock()
    quarantined: Path | None = None
    with translate_sqlite_errors("opening the store"):
        check_directory(image_dir)
        if path is not None:
            check_store_access(path)
            if path.exists() and path.stat().st_size > 0 and _is_corrupt(path):
                stamp = clock.utc_now().strftime("%Y%m%dT%H%M%SZ")
                quarantined = quarantine(path, stamp)
                _logger.error("store %s is corrupt (not a database or fails the integrity check); moved it to %s",
                              path, quarantined)  # fmt: skip
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        else:
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        db = Database(conn)
        if path is not None:
            conn.execute("PRAGMA journal_mode = WAL")
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_BYTES // page_size}")
        conn.execute("PRAGMA synchronous = FULL")
        if max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
        MIGRATIONS.apply(db)
    store = Store(
        db,
        path=path,
        image_dir=image_dir,
        clock=clock,
        origin=origin or Origin(),
        min_free_mb=min_free_mb,
        low_disk_warn_mb=low_disk_warn_mb,
    )
    queue_withheld(store)  # control-solution results migration 0008 took out of the readings, unsent
    if quarantined is not None:
        store.set_kv(QUARANTINE_KEY, str(quarantined), durable=True)
        add_event(
            store,
            "store_quarantined",
            "the database file was corrupt; it was set aside and a fresh store started",
            level="error",
            detail={"quarantined_to": quarantined.name},
        )
    return store
