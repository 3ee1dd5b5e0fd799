"""The reference receiver's own SQLite database (the platform side of the demo and the tests).

Lives in ``store/`` because store/ is the only code that touches SQLite. The receiver
(:mod:`gateway.emulate.platform`) decides what a message is; this module only keeps it, durably
(``synchronous=FULL``: the receiver acknowledges a message only after :meth:`PlatformStore.commit` of it).

Deduplication is on ``message_id`` (the ``messages`` table's primary key). The readings table has no
unique constraint on ``reading_id`` on purpose: a test can then see a reading that arrived twice under two
message ids, which would be a gateway bug.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY, topic TEXT NOT NULL, site_id TEXT, gateway_id TEXT, kind TEXT NOT NULL,
    received_at TEXT NOT NULL, payload BLOB
);
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, reading_id TEXT, meter_id TEXT, sequence INTEGER,
    format TEXT NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_reading_id ON readings (reading_id);
CREATE TABLE IF NOT EXISTS assignments (
    reading_id TEXT PRIMARY KEY, patient_id TEXT NOT NULL, assignment_id TEXT NOT NULL, message_id TEXT NOT NULL,
    assigned_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS qc_results (
    id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, qc_id TEXT, meter_id TEXT, format TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blood_pressure (
    id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, reading_id TEXT, meter_id TEXT, format TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, capture_id TEXT NOT NULL, doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    capture_id TEXT NOT NULL, idx INTEGER NOT NULL, total INTEGER NOT NULL, sha256 TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (capture_id, idx)
);
CREATE TABLE IF NOT EXISTS images (
    capture_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size_bytes INTEGER NOT NULL, data BLOB NOT NULL,
    completed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS status (
    site_id TEXT NOT NULL, gateway_id TEXT NOT NULL, state TEXT NOT NULL, doc TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (site_id, gateway_id)
);
CREATE TABLE IF NOT EXISTS invalid (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, message_id TEXT, reason TEXT NOT NULL, received_at TEXT NOT NULL,
    payload BLOB
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class PlatformStore:
    """One SQLite file; used by one writer thread plus readers (tests, ``counts``) under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA busy_timeout = 5000")
            self.conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"receiver database {path}: {exc}") from exc

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def batch(self) -> Iterator[PlatformStore]:
        """One durable transaction; committed (fsynced) when the block ends without an error."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"receiver database: {exc}") from exc

    # -- writes (inside batch()) -------------------------------------------------------------------
    def add_message(
        self, message_id: str, topic: str, *, site_id: str, gateway_id: str, kind: str, payload: bytes | None
    ) -> bool:
        """Record a message id; False when it was seen before (a duplicate, counted)."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO messages (message_id, topic, site_id, gateway_id, kind, received_at, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [message_id, topic, site_id, gateway_id, kind, _now(), payload],
        )
        if cur.rowcount == 0:
            self.bump("duplicates")
            return False
        return True

    def bump(self, name: str, n: int = 1) -> None:
        self.conn.execute(
            "INSERT INTO counters (name, n) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
            [name, n],
        )

    def add_reading(self, message_id: str, doc: Mapping[str, Any], fmt: str) -> None:
        if fmt == "fhir":
            ids = {i.get("system"): i.get("value") for i in doc.get("identifier", [])}
            reading_id = ids.get("urn:clinic-gateway:reading-id")
            meter_id = (doc.get("device") or {}).get("display")
            sequence = None
        else:
            reading_id, meter_id, sequence = doc.get("reading_id"), doc.get("meter_id"), doc.get("sequence")
        self.conn.execute(
            "INSERT INTO readings (message_id, reading_id, meter_id, sequence, format, doc) VALUES (?, ?, ?, ?, ?, ?)",
            [message_id, reading_id, meter_id, sequence, fmt, json.dumps(doc)],
        )

    def assign(self, message_id: str, doc: Mapping[str, Any]) -> int:
        """Apply a ``cg.assignment/1`` correction: each listed reading is the patient's. Kept per reading id, so
        it holds whether the reading arrived before or after it, and applying it again changes nothing (the
        later ``assigned_at`` wins should two ever name one reading). Returns the readings it set."""
        changed = 0
        for reading_id in doc["reading_ids"]:
            cur = self.conn.execute(
                "INSERT INTO assignments (reading_id, patient_id, assignment_id, message_id, assigned_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (reading_id) DO UPDATE SET patient_id = excluded.patient_id, "
                "assignment_id = excluded.assignment_id, message_id = excluded.message_id, "
                "assigned_at = excluded.assigned_at WHERE excluded.assigned_at > assignments.assigned_at",
                [reading_id, doc["patient_id"], doc["assignment_id"], message_id, doc["assigned_at"]],
            )
            changed += cur.rowcount
        return changed

    def add_qc(self, message_id: str, doc: Mapping[str, Any], fmt: str) -> None:
        """Keep a meter's quality-control result apart from every patient's readings."""
        if fmt == "fhir":
            ids = {i.get("system"): i.get("value") for i in doc.get("identifier", [])}
            qc_id = ids.get("urn:clinic-gateway:qc-id")
            meter_id = ((doc.get("device") or {}).get("identifier") or {}).get("value")
        else:
            qc_id, meter_id = doc.get("qc_id"), doc.get("meter_id")
        self.conn.execute(
            "INSERT INTO qc_results (message_id, qc_id, meter_id, format, doc) VALUES (?, ?, ?, ?, ?)",
            [message_id, qc_id, meter_id, fmt, json.dumps(doc)],
        )

    def add_blood_pressure(self, message_id: str, doc: Mapping[str, Any], fmt: str) -> None:
        """Keep a blood pressure reading (native document or FHIR Observation)."""
        if fmt == "fhir":
            ids = {i.get("system"): i.get("value") for i in doc.get("identifier", [])}
            reading_id, meter_id = ids.get("urn:clinic-gateway:reading-id"), (doc.get("device") or {}).get("display")
        else:
            reading_id, meter_id = doc.get("reading_id"), doc.get("meter_id")
        self.conn.execute(
            "INSERT INTO blood_pressure (message_id, reading_id, meter_id, format, doc) VALUES (?, ?, ?, ?, ?)",
            [message_id, reading_id, meter_id, fmt, json.dumps(doc)],
        )

    def add_capture(self, message_id: str, doc: Mapping[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO captures (message_id, capture_id, doc) VALUES (?, ?, ?)",
            [message_id, doc["capture_id"], json.dumps(doc)],
        )

    def add_event(self, message_id: str, doc: Mapping[str, Any]) -> None:
        self.conn.execute("INSERT INTO events (message_id, doc) VALUES (?, ?)", [message_id, json.dumps(doc)])

    def set_status(self, site_id: str, gateway_id: str, doc: Mapping[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO status (site_id, gateway_id, state, doc, at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (site_id, gateway_id) DO UPDATE SET state = excluded.state, doc = excluded.doc, "
            "at = excluded.at",
            [site_id, gateway_id, doc.get("state"), json.dumps(doc), _now()],
        )

    def add_invalid(self, topic: str, message_id: str | None, reason: str, payload: bytes | None) -> None:
        self.conn.execute(
            "INSERT INTO invalid (topic, message_id, reason, received_at, payload) VALUES (?, ?, ?, ?, ?)",
            [topic, message_id, reason, _now(), payload],
        )

    def add_chunk(self, capture_id: str, index: int, total: int, sha256: str, data: bytes) -> list[bytes] | None:
        """Keep one image chunk; when all ``total`` are held, return them in order (else None)."""
        self.conn.execute(
            "INSERT OR IGNORE INTO chunks (capture_id, idx, total, sha256, data) VALUES (?, ?, ?, ?, ?)",
            [capture_id, index, total, sha256, data],
        )
        held = self.conn.execute("SELECT count(*) FROM chunks WHERE capture_id = ?", [capture_id]).fetchone()[0]
        if held < total:
            return None
        rows = self.conn.execute("SELECT data FROM chunks WHERE capture_id = ? ORDER BY idx", [capture_id]).fetchall()
        return [bytes(r[0]) for r in rows]

    def chunk_rows(self, capture_id: str) -> list[tuple[int, int, str, bytes]]:
        rows = self.conn.execute(
            "SELECT idx, total, sha256, data FROM chunks WHERE capture_id = ? ORDER BY idx", [capture_id]
        ).fetchall()
        return [(int(r[0]), int(r[1]), str(r[2]), bytes(r[3])) for r in rows]

    def drop_chunks(self, capture_id: str) -> None:
        self.conn.execute("DELETE FROM chunks WHERE capture_id = ?", [capture_id])

    def add_image(self, capture_id: str, sha256: str, data: bytes) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO images (capture_id, sha256, size_bytes, data, completed_at) VALUES (?, ?, ?, ?, ?)",
            [capture_id, sha256, len(data), data, _now()],
        )
        self.drop_chunks(capture_id)

    # -- reads ---------------------------------------------------------------------------------------
    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts (tests and the demo read the receiver's store through this)."""
        with self.lock:
            try:
                cur = self.conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"receiver database: {exc}") from exc
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def counter(self, name: str) -> int:
        rows = self.query("SELECT n FROM counters WHERE name = ?", [name])
        return int(rows[0]["n"]) if rows else 0

    def counts(self) -> dict[str, int]:
        """How many of each thing the platform holds."""
        out: dict[str, int] = {}
        for table in ("readings", "assignments", "qc_results", "blood_pressure", "captures", "images", "events",
                      "invalid", "messages"):  # fmt: skip
            out[table] = int(self.query(f"SELECT count(*) AS n FROM {table}")[0]["n"])
        out["duplicates"] = self.counter("duplicates")
        return out
