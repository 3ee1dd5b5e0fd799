"""The store: one connection, one lock, durable and quick transactions, one error translation point.

Opening it (access checks, quarantine of a corrupt file, pragmas, migrations) is :mod:`gateway.store.startup`.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlite_utils import Database

from gateway.clock import Clock
from gateway.errors import DiskFull, IntakeRefused, StoreError
from gateway.wire.envelope import Envelope

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_logger = logging.getLogger(__name__)

INTAKE_HEADROOM_BYTES = 1024 * 1024
"""Room an intake needs besides its own bytes (WAL frames of the rows and indexes it writes)."""
WAL_CHECKPOINT_BYTES = INTAKE_HEADROOM_BYTES // 2
"""The WAL is checkpointed into the database once it holds this much. A checkpoint grows the database file by
up to the WAL's size at once; SQLite's default (1,000 pages, 4 MB) would let one checkpoint eat more than the
intake headroom on a nearly full card, so the headroom's claim holds only with a smaller WAL."""


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

    def envelope(self, message_id: str, created_at: datetime) -> Envelope:
        """The envelope of one message this gateway sends."""
        return Envelope(message_id, self.site_id, self.gateway_id, created_at)


def columns(row_type: type[DataclassInstance]) -> str:
    """The select list of a typed row read from one table: its fields, in order, named as the table's columns."""
    return ", ".join(f.name for f in fields(row_type))


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

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query and return rows as tuples, in the select list's order: for reads of thousands of rows
        (a visit's readings), where a dict per row costs as much as the query."""
        with self.lock, translate_sqlite_errors("store read"):
            return list(self.db.execute(sql, params).fetchall())

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
