"""Append-only trail of desk actions: who linked which meter, reading or photo to which patient."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from gateway.store.db import Store, columns, iso


def record(
    db: Database,
    store: Store,
    *,
    actor: str,
    action: str,
    target_kind: str | None = None,
    target_id: str | None = None,
    patient_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Append one audit row inside the caller's transaction."""
    db.execute(
        "INSERT INTO audit (at, actor, action, target_kind, target_id, patient_id, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [iso(store.clock.utc_now()), actor, action, target_kind, target_id, patient_id, json.dumps(dict(detail or {}))],
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """A desk action to be recorded by the code that stores what it is about, in that same transaction
    (a photo and the row saying who took it for which patient are written together, or neither is)."""

    actor: str
    action: str
    target_kind: str | None = None
    target_id: str | None = None
    patient_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def record_entry(db: Database, store: Store, entry: AuditEntry, **more_detail: Any) -> None:
    """Append ``entry`` inside the caller's transaction, its detail extended by ``more_detail``."""
    record(
        db,
        store,
        actor=entry.actor,
        action=entry.action,
        target_kind=entry.target_kind,
        target_id=entry.target_id,
        patient_id=entry.patient_id,
        detail={**entry.detail, **more_detail},
    )


def add(store: Store, *, actor: str, action: str, **fields: Any) -> None:
    """Append one audit row in its own transaction."""
    with store.transaction() as db:
        record(db, store, actor=actor, action=action, **fields)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One recorded desk action: when, who, what, about which patient (read back for checks and IT)."""

    id: int
    at: str
    actor: str
    action: str
    target_kind: str | None
    target_id: str | None
    patient_id: str | None
    detail: dict[str, Any]


def recent(store: Store, *, limit: int = 50) -> list[AuditRow]:
    """Newest audit rows first."""
    rows = store.query(
        f"SELECT {columns(AuditRow)} FROM audit ORDER BY id DESC LIMIT ?",
        [limit],
    )
    return [AuditRow(**{**row, "detail": json.loads(row["detail"])}) for row in rows]
