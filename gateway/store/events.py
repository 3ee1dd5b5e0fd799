"""Operational events: kept locally (status page: recent errors) and sent on the ``events`` topic.

Events never carry patient data: ids, counts and reasons only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gateway.store.db import Store, columns, iso, new_id
from gateway.store.outbox import enqueue
from gateway.wire import contract

Level = Literal["info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One operational event as kept locally (ids, counts and reasons: never patient data)."""

    id: int | None
    """The events table's row id; None for an entry that is not a stored event (the broker link's last error)."""
    at: str
    level: Level
    kind: str
    message: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The status page's form of the event."""
        return asdict(self)


def add_event(
    store: Store, kind: str, message: str, *, level: Level = "info", detail: Mapping[str, Any] | None = None
) -> str:
    """Record an event and queue it for the platform in one transaction; return its message id."""
    now = store.clock.utc_now()
    message_id = new_id()
    detail = dict(detail or {})
    with store.transaction(durable=False) as db:
        cur = db.execute(
            "INSERT INTO events (at, level, kind, message, detail) VALUES (?, ?, ?, ?, ?)",
            [iso(now), level, kind, message, json.dumps(detail)],
        )
        enqueue(
            db,
            kind="event",
            topic=contract.TOPIC_EVENTS,
            created_at=now,
            message_id=message_id,
            record_ref=f"event:{cur.lastrowid}",  # the prune finds event messages by it (outbox_records)
            payload=contract.event_payload(
                kind=kind,
                level=level,
                message=message,
                detail=detail,
                envelope=store.origin.envelope(message_id, now),
            ),
        )
    return message_id


def recent_events(store: Store, *, limit: int = 20, min_level: Level = "info") -> list[StoredEvent]:
    """Newest events first, at or above ``min_level``."""
    levels = {"info": ("info", "warning", "error"), "warning": ("warning", "error"), "error": ("error",)}[min_level]
    rows = store.query(
        f"SELECT {columns(StoredEvent)} FROM events WHERE level IN ({', '.join('?' * len(levels))}) "
        "ORDER BY id DESC LIMIT ?",
        [*levels, limit],
    )
    return [StoredEvent(**{**row, "detail": json.loads(row["detail"])}) for row in rows]
