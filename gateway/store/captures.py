"""Retinal captures: the image file by SHA-256, the capture row and its outbox messages.

Write order (crash safety): the image goes to disk first (temp file, fsync, rename, fsync of the
directory), then ONE durable transaction adds the capture row, the ``retina/capture`` message and one
outbox row per image chunk. A crash between the two leaves an unreferenced file, which the next intake
of the same bytes reuses; it never leaves a row that points at a missing file.

Chunk rows carry ``body_ref = image:<sha256>:<offset>:<length>`` instead of bytes; the forwarder calls
:func:`read_body` at send time. Each chunk is its own message with its own acknowledgement, so an image
interrupted by a broker outage resumes at the first unacknowledged chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.errors import FrameError, StoreError
from gateway.records import Capture, Eye, Field, TriageDecision
from gateway.store import audit
from gateway.store.audit import AuditEntry
from gateway.store.db import Store, columns, iso, new_id, translate_sqlite_errors
from gateway.store.outbox import enqueue
from gateway.wire import chunks as chunking
from gateway.wire import contract

_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/tiff": ".tif"}


@dataclass(frozen=True, slots=True)
class StoredCapture:
    """What :func:`add_capture` did."""

    capture_id: str
    message_id: str | None
    """The ``retina/capture`` message id (None for a duplicate, which queues nothing)."""
    chunks: int
    image_path: Path
    duplicate: bool


def relative_image_path(sha256: str, media_type: str) -> Path:
    """Where an image lives under the image directory: ``<sha[:2]>/<sha><ext>``."""
    return Path(sha256[:2]) / (sha256 + _EXTENSIONS.get(media_type, ".bin"))


def write_image(store: Store, data: bytes, sha256: str, media_type: str) -> Path:
    """Put the image under the image directory by its SHA-256, durably; return the absolute path.

    An existing file with the same name and size is kept (same hash: same bytes). Otherwise the bytes
    go to a temporary file in the same directory, are fsynced, renamed into place and the directory
    is fsynced, so a power cut leaves either no file or the whole file.
    """
    target = store.image_dir / relative_image_path(sha256, media_type)
    with translate_sqlite_errors("writing the image"):
        if target.is_file() and target.stat().st_size == len(data):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{new_id()[:8]}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(target.parent)
    return target


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _find_duplicate(store: Store, capture: Capture) -> str | None:
    """An existing capture of the same bytes for the same patient, eye, field and source."""
    value = store.scalar(
        "SELECT capture_id FROM captures WHERE sha256 = ? AND patient_id IS ? AND eye = ? AND field = ? "
        "AND source = ? ORDER BY stored_at LIMIT 1",
        [capture.sha256, capture.patient_id, str(capture.eye), str(capture.field), capture.source],
    )
    return None if value is None else str(value)


def add_capture(
    store: Store,
    capture: Capture,
    data: bytes,
    *,
    chunk_size: int,
    folder_file: str | None = None,
    audit_entry: AuditEntry | None = None,
) -> StoredCapture:
    """Store a capture: image file, then row + ``retina/capture`` message + chunk messages in ONE transaction.

    The same bytes for the same patient, eye, field and source are a duplicate: the first capture is
    returned and nothing is queued again. ``folder_file`` (a name in the camera's export folder) is
    recorded in the folder ledger in the same transaction, so the file is never taken twice.
    ``audit_entry`` (the desk action that brought the photo) is recorded in that transaction too, with the
    capture id: a photo is never stored without its audit row, nor an audit row written for a photo that
    was not stored.

    Raises:
        IntakeRefused: free space is below the floor (nothing written).
        StoreError / DiskFull: the file or the database could not be written (nothing half-written).
        ValueError: ``data`` does not match ``capture.sha256`` / ``size_bytes`` (a caller bug).
    """
    if len(data) != capture.size_bytes:
        raise ValueError(f"capture says {capture.size_bytes} bytes, data has {len(data)}")
    store.check_intake(len(data))
    relative = relative_image_path(capture.sha256, capture.media_type)
    duplicate_of = _find_duplicate(store, capture)
    if duplicate_of is not None:
        if folder_file is not None or audit_entry is not None:
            with store.transaction(durable=True) as db:
                if folder_file is not None:
                    _ledger_insert(db, folder_file, capture.sha256, len(data), outcome="duplicate",
                                   capture_id=duplicate_of, at=iso(store.clock.utc_now()))  # fmt: skip
                if audit_entry is not None:
                    audit.record_entry(db, store, audit_entry, capture_id=duplicate_of, duplicate=True)
        return StoredCapture(
            capture_id=duplicate_of,
            message_id=None,
            chunks=0,
            image_path=store.image_dir / relative,
            duplicate=True,
        )
    path = write_image(store, data, capture.sha256, capture.media_type)
    plan = chunking.plan(len(data), chunk_size)
    origin = store.origin
    now = store.clock.utc_now()
    message_id = new_id()
    quality, triage = capture.quality, capture.triage
    with store.transaction(durable=True) as db:
        db.execute(
            "INSERT INTO captures (capture_id, sha256, size_bytes, media_type, width, height, eye, field, source, "
            "captured_at, patient_id, session_id, operator, quality_ok, quality_reasons, quality_metrics, "
            "referable_probability, decision, model_version, thresholds, image_path, stored_at, message_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                capture.capture_id,
                capture.sha256,
                capture.size_bytes,
                capture.media_type,
                capture.width,
                capture.height,
                str(capture.eye),
                str(capture.field),
                capture.source,
                iso(capture.captured_at),
                capture.patient_id,
                capture.session_id,
                capture.operator,
                int(quality.ok),
                json.dumps(list(quality.reasons)),
                json.dumps(dict(quality.metrics), sort_keys=True),
                None if triage is None else triage.referable_probability,
                None if triage is None else str(triage.decision),
                None if triage is None else triage.model_version,
                json.dumps({} if triage is None else dict(triage.thresholds), sort_keys=True),
                str(relative),
                iso(now),
                message_id,
            ],
        )
        enqueue(
            db,
            kind="capture",
            topic=contract.TOPIC_CAPTURE,
            created_at=now,
            message_id=message_id,
            record_ref=f"capture:{capture.capture_id}",
            payload=contract.capture_payload(
                capture, envelope=origin.envelope(message_id, now), chunk_size=chunk_size, chunks=len(plan)
            ),
        )
        topic = contract.image_topic(capture.capture_id)
        for chunk in plan:
            enqueue(
                db,
                kind="image_chunk",
                topic=topic,
                created_at=now,
                record_ref=f"capture:{capture.capture_id}",
                body_ref=chunking.body_ref(capture.sha256, chunk.offset, chunk.length),
                properties=chunking.chunk_properties(capture.capture_id, chunk, capture.sha256),
            )
        if folder_file is not None:
            _ledger_insert(
                db, folder_file, capture.sha256, len(data), outcome="stored", capture_id=capture.capture_id, at=iso(now)
            )
        if audit_entry is not None:
            audit.record_entry(db, store, audit_entry, capture_id=capture.capture_id)
    return StoredCapture(
        capture_id=capture.capture_id, message_id=message_id, chunks=len(plan), image_path=path, duplicate=False
    )


def read_body(store: Store, body_ref: str) -> bytes:
    """The bytes an outbox row's ``body_ref`` names (``image:<sha256>:<offset>:<length>``).

    Raises:
        StoreError: the reference is malformed, the image is not in the store, or its file is missing or
            shorter than the reference says.
    """
    try:
        sha256, offset, length = chunking.parse_body_ref(body_ref)
    except FrameError as exc:
        raise StoreError(str(exc)) from exc
    relative = store.scalar("SELECT image_path FROM captures WHERE sha256 = ? LIMIT 1", [sha256])
    if relative is None:
        raise StoreError(f"image {sha256[:12]} is not in the store")
    path = store.image_dir / str(relative)
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
    except FileNotFoundError as exc:
        raise StoreError(f"image file {relative} is missing from the image directory") from exc
    except OSError as exc:
        raise StoreError(f"image file {relative} cannot be read: {exc.strerror}") from exc
    if len(data) != length:
        raise StoreError(f"image file {relative} is shorter than expected ({offset + len(data)} bytes)")
    return data


def image_path(store: Store, capture_id: str) -> Path | None:
    """Absolute path of a capture's image file (None for an unknown capture)."""
    relative = store.scalar("SELECT image_path FROM captures WHERE capture_id = ?", [capture_id])
    return None if relative is None else store.image_dir / str(relative)


def image_bytes(store: Store, capture_id: str) -> bytes | None:
    """The stored bytes of a capture's image (None for an unknown capture or a missing file)."""
    path = image_path(store, capture_id)
    if path is None:
        return None
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"image file of capture {capture_id} cannot be read: {exc.strerror}") from exc


class Delivery(StrEnum):
    """Where a capture stands with the hospital, from its outbox rows (the capture message and its chunks)."""

    QUEUED = "queued"
    """Some of it is not yet acknowledged by the platform (the link is down, or it is on its way)."""
    HELD = "held"
    """The broker refused part of it: parked until IT retries (status page)."""
    DELIVERED = "delivered"
    """The platform acknowledged all of it (or its acknowledged rows were already pruned)."""


def delivery_states(store: Store, capture_ids: list[str]) -> dict[str, Delivery]:
    """Each capture's :class:`Delivery`, from the outbox rows its ``record_ref`` names (one indexed query)."""
    if not capture_ids:
        return {}
    refs = [f"capture:{c}" for c in capture_ids]
    marks = ", ".join("?" for _ in refs)
    rows = store.query(
        "SELECT record_ref, sum(state = 'parked') AS parked, sum(state = 'pending') AS waiting "
        f"FROM outbox WHERE record_ref IN ({marks}) GROUP BY record_ref",
        refs,
    )
    found = {r["record_ref"].removeprefix("capture:"): r for r in rows}
    out: dict[str, Delivery] = {}
    for capture_id in capture_ids:
        row = found.get(capture_id)
        if row is not None and row["parked"]:
            out[capture_id] = Delivery.HELD
        elif row is not None and row["waiting"]:
            out[capture_id] = Delivery.QUEUED
        else:
            out[capture_id] = Delivery.DELIVERED
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureRow:
    """A stored retinal photo as the ``captures`` table holds it: its file, what the desk said of it, the
    quality gate's verdict and the advisory triage (patient data: only pages behind a login read it).
    Timestamps are the stored ISO 8601 text; the JSON columns come decoded."""

    capture_id: str
    sha256: str
    size_bytes: int
    media_type: str
    width: int
    height: int
    eye: Eye
    field: Field
    source: str
    """How it was taken: ``camera``, ``upload`` or ``folder`` for the intake's photos (the column itself is free
    text, as :attr:`Capture.source` is)."""
    captured_at: str
    patient_id: str | None
    session_id: str | None
    operator: str | None
    quality_ok: bool
    quality_reasons: tuple[str, ...]
    quality_metrics: Mapping[str, float]
    referable_probability: float | None
    decision: TriageDecision | None
    """None when no triage model ran."""
    model_version: str | None
    thresholds: Mapping[str, float]
    """The triage model's thresholds ({} when no model ran)."""
    image_path: str
    """Relative to the image directory (see :func:`relative_image_path`)."""
    stored_at: str
    message_id: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CaptureRow:
        """The record of one ``captures`` row selected with :data:`_CAPTURE_COLUMNS`."""
        return cls(
            capture_id=row["capture_id"],
            sha256=row["sha256"],
            size_bytes=row["size_bytes"],
            media_type=row["media_type"],
            width=row["width"],
            height=row["height"],
            eye=Eye(row["eye"]),
            field=Field(row["field"]),
            source=row["source"],
            captured_at=row["captured_at"],
            patient_id=row["patient_id"],
            session_id=row["session_id"],
            operator=row["operator"],
            quality_ok=bool(row["quality_ok"]),
            quality_reasons=tuple(json.loads(row["quality_reasons"])),
            quality_metrics=json.loads(row["quality_metrics"]),
            referable_probability=row["referable_probability"],
            decision=None if row["decision"] is None else TriageDecision(row["decision"]),
            model_version=row["model_version"],
            thresholds=json.loads(row["thresholds"]),
            image_path=row["image_path"],
            stored_at=row["stored_at"],
            message_id=row["message_id"],
        )


_CAPTURE_COLUMNS = columns(CaptureRow)
"""The columns :meth:`CaptureRow.from_row` reads: one a field, named as the table names them."""


def get_capture(store: Store, capture_id: str) -> CaptureRow | None:
    """One capture, or None."""
    rows = store.query(f"SELECT {_CAPTURE_COLUMNS} FROM captures WHERE capture_id = ?", [capture_id])
    return CaptureRow.from_row(rows[0]) if rows else None


def list_captures(
    store: Store, *, session_id: str | None = None, patient_id: str | None = None, limit: int = 50
) -> list[CaptureRow]:
    """Captures, newest first, optionally of one desk session or one patient."""
    where, params = [], []
    if session_id is not None:
        where.append("session_id = ?")
        params.append(session_id)
    if patient_id is not None:
        where.append("patient_id = ?")
        params.append(patient_id)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = store.query(
        f"SELECT {_CAPTURE_COLUMNS} FROM captures {clause}ORDER BY stored_at DESC, rowid DESC LIMIT ?",
        [*params, limit],
    )
    return [CaptureRow.from_row(r) for r in rows]


def count_captures(store: Store) -> int:
    """Number of stored captures."""
    return int(store.scalar("SELECT count(*) FROM captures"))


# -- export-folder ledger ---------------------------------------------------------------------------
def folder_file_seen(store: Store, name: str, sha256: str) -> bool:
    """True when this file (name and content) was already taken from the export folder."""
    return store.scalar("SELECT 1 FROM retina_folder_files WHERE name = ? AND sha256 = ?", [name, sha256]) is not None


def record_folder_refusal(store: Store, name: str, sha256: str, size_bytes: int, reason: str) -> None:
    """Remember a folder file that was refused (unreadable, unsupported...), so it is not retried forever."""
    _record_folder_file(store, name, sha256, size_bytes, outcome=f"refused: {reason}"[:300], capture_id=None)


def _record_folder_file(
    store: Store, name: str, sha256: str, size_bytes: int, *, outcome: str, capture_id: str | None
) -> None:
    with store.transaction(durable=True) as db:
        _ledger_insert(
            db, name, sha256, size_bytes, outcome=outcome, capture_id=capture_id, at=iso(store.clock.utc_now())
        )


def _ledger_insert(
    db: Any, name: str, sha256: str, size_bytes: int, *, outcome: str, capture_id: str | None, at: str
) -> None:
    db.execute(
        "INSERT OR IGNORE INTO retina_folder_files (name, sha256, size_bytes, outcome, capture_id, taken_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [name, sha256, size_bytes, outcome, capture_id, at],
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FolderFileRow:
    """A file taken from a fundus camera's export folder and what became of it (its name, no image content)."""

    name: str
    sha256: str
    size_bytes: int
    outcome: str
    """``stored``, ``duplicate`` or ``refused: <reason>``."""
    capture_id: str | None
    """The capture it became (None for a refused file)."""
    taken_at: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> FolderFileRow:
        """The record of one ``retina_folder_files`` row."""
        return cls(
            name=row["name"],
            sha256=row["sha256"],
            size_bytes=row["size_bytes"],
            outcome=row["outcome"],
            capture_id=row["capture_id"],
            taken_at=row["taken_at"],
        )


def folder_ledger(store: Store, *, limit: int = 50) -> list[FolderFileRow]:
    """Recent export-folder files and what became of them, newest first."""
    rows = store.query(
        "SELECT name, sha256, size_bytes, outcome, capture_id, taken_at FROM retina_folder_files "
        "ORDER BY taken_at DESC LIMIT ?",
        [limit],
    )
    return [FolderFileRow.from_row(r) for r in rows]


__all__ = [
    "CaptureRow",
    "Delivery",
    "FolderFileRow",
    "StoredCapture",
    "add_capture",
    "count_captures",
    "delivery_states",
    "folder_file_seen",
    "folder_ledger",
    "get_capture",
    "image_bytes",
    "image_path",
    "list_captures",
    "read_body",
    "record_folder_refusal",
    "relative_image_path",
    "write_image",
]
