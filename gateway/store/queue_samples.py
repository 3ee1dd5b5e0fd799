"""Outbox depth sampled over time, for the status page's queue chart and drain rate (no patient data)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.store.db import Store, columns, iso


@dataclass(frozen=True, slots=True)
class QueueSample:
    """The outbox's depth at one moment, and the acked messages counted so far (for the drain rate)."""

    at: str
    """UTC ISO time, as stored (the status page's JSON shows it as is)."""
    unsent: int
    parked: int
    acked_total: int

    @property
    def taken_at(self) -> datetime:
        """:attr:`at` as a time."""
        return datetime.fromisoformat(self.at)


def add_sample(store: Store, *, unsent: int, parked: int, acked_total: int, keep_since: datetime) -> None:
    """Append one sample and drop those older than ``keep_since`` (one small transaction)."""
    now = iso(store.clock.utc_now())
    with store.transaction(durable=False) as db:
        db.execute(
            "INSERT INTO web_queue_samples (at, unsent, parked, acked_total) VALUES (?, ?, ?, ?)",
            [now, unsent, parked, acked_total],
        )
        db.execute("DELETE FROM web_queue_samples WHERE at < ?", [iso(keep_since)])


def samples_since(store: Store, since: datetime) -> list[QueueSample]:
    """Samples taken at or after ``since``, oldest first."""
    rows = store.query(f"SELECT {columns(QueueSample)} FROM web_queue_samples WHERE at >= ? ORDER BY at", [iso(since)])
    return [QueueSample(**row) for row in rows]
