"""Open the store: pragmas, migrations, quarantine of a corrupt file, one lock, one error translation point."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import stat
import threading
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlite_utils import Database

from gateway.clock import Clock, SystemClock
from gateway.config import user_name
from gateway.errors import DiskFull, IntakeRefused, StoreCannotOpen, StoreError
from gateway.store.migrations import MIGRATIONS

_logger = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
SIDECARS = ("-wal", "-shm")
"""Files SQLite keeps next to a WAL-mode database."""
INTAKE_HEADROOM_BYTES = 1024 * 1024
"""Room an intake needs besides its own bytes (WAL frames of the rows and indexes it writes)."""
WAL_CHECKPOINT_BYTES = INTAKE_HEADROOM_BYTES // 2
"""The WAL is checkpointed into the database once it holds this much. A checkpoint grows the database file by
up to the WAL's size at once; SQLite's default (1,000 pages, 4 MB) would let one checkpoint eat more than the
intake headroom on a nearly full card, so the headroom's claim holds only with a smaller WAL."""
QUARANTINE_KEY = "quarantined_file"


def new_id() -> str:
    """A fresh random identifier (32 hex digits) for messages, readings, captures, sessions."""
    return uuid.uuid4().hex


def iso(ts: datetime) -> str:
    """ISO 8601 with offset and milliseconds, as every stored and sent timestamp is written."""
    return ts.isoformat(timespec="milliseconds")


@contextmanager
def translate_sqlite_errors(what: str) -> Iterator[None]:
    """Map ``sqlite3`` errors to the gateway's StoreError tree (the one translation point)."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "full" in str(exc).lower():
            raise DiskFull(f"{what}: the store is full ({exc})") from exc
        raise StoreError(f"{what}: {exc}") from exc
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise DiskFull(f"{what}: no space left on device") from exc
        raise StoreError(f"{what}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sends: stamped into every up message the store enqueues."""

    site_id: str = "site"
    gateway_id: str = "gateway"
    payload_format: Literal["json", "fhir"] = "json"


class Store:
    """The gateway's SQLite database and image directory, shared by the asyncio core and the web threads.

    One connection, serialised by a re-entrant lock: the gateway's write rate is tiny and SQLite
    serialises writers anyway. Clinical writes commit with ``synchronous=FULL``; outbox bookkeeping
    (whose loss on power cut only causes a harmless re-send) may use ``durable=False``.
    """

    def __init__(
        self,
        db: Database,
        *,
        path: Path | None,
        image_dir: Path,
        clock: Clock,
        origin: Origin,
        min_free_mb: int = 0,
        low_disk_warn_mb: int = 0,
    ) -> None:
        self.db = db
        self.origin = origin
        self.path = path
        self.image_dir = image_dir
        self.clock = clock
        self.min_free_mb = min_free_mb
        self.low_disk_warn_mb = low_disk_warn_mb
        self.lock = threading.RLock()
        self._synchronous = "FULL"

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Database]:
        """One atomic block (nested blocks become savepoints). Errors come out as StoreError/DiskFull."""
        with self.lock, translate_sqlite_errors("store write"):
            if not self.db.conn.in_transaction:
                self._set_synchronous("FULL" if durable else "NORMAL")
            with self.db.atomic():
                yield self.db

    def _set_synchronous(self, mode: str) -> None:
        if mode != self._synchronous:
            self.db.conn.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Run a read query and return rows as dicts."""
        with self.lock, translate_sqlite_errors("store read"):
            return list(self.db.query(sql, params))

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run a query returning one value (or None)."""
        with self.lock, translate_sqlite_errors("store read"):
            row = self.db.execute(sql, params).fetchone()
            return None if row is None else row[0]

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- disk ---------------------------------------------------------------------------------
    def free_bytes(self) -> int:
        """Free bytes on the file system that holds the database (or the image dir)."""
        target = self.path.parent if self.path is not None else self.image_dir
        return shutil.disk_usage(target).free

    def check_intake(self, nbytes: int = 0) -> None:
        """Refuse new clinical intake when free space is below the floor, or (whatever the floor, also 0) when
        ``nbytes`` plus a little room for the database's own writes would not fit. Stored data stays safe."""
        free = self.free_bytes()
        if self.min_free_mb and free < self.min_free_mb * 1024 * 1024:
            raise IntakeRefused(f"intake refused: less than {self.min_free_mb} MB free on the store's file system")
        if free < nbytes + INTAKE_HEADROOM_BYTES:
            raise DiskFull(f"the store's file system is full ({free // 1024} KiB free, {nbytes // 1024} KiB needed)")

    # -- small key/value state ---------------------------------------------------------------
    def get_kv(self, key: str) -> str | None:
        value = self.scalar("SELECT value FROM kv WHERE key = ?", [key])
        return None if value is None else str(value)

    def set_kv(self, key: str, value: str, *, durable: bool = False) -> None:
        with self.transaction(durable=durable) as db:
            db.execute(
                "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                [key, value, iso(self.clock.utc_now())],
            )


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
    if quarantined is not None:
        from gateway.store.events import add_event

        store.set_kv(QUARANTINE_KEY, str(quarantined), durable=True)
        add_event(
            store,
            "store_quarantined",
            "the database file was corrupt; it was set aside and a fresh store started",
            level="error",
            detail={"quarantined_to": quarantined.name},
        )
    return store
