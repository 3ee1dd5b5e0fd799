"""Outbox depth sampled over time, for the status page's queue chart and drain rate (no patient data)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.store.db import Store, iso


def add_sample(store: Store, *, unsent: int, parked: int, acked_total: int, keep_since: datetime) -> None:
    """Append one sample and drop those older than ``keep_since`` (one small transaction)."""
    now = iso(store.clock.utc_now())
    with store.transaction(durable=False) as db:
        db.execute(
            "INSERT INTO web_queue_samples (at, unsent, parked, acked_total) VALUES (?, ?, ?, ?)",
            [now, unsent, parked, acked_total],
        )
        db.execute("DELETE FROM web_queue_samples WHERE at < ?", [iso(keep_since)])


def samples_since(store: Store, since: datetime) -> list[dict[str, Any]]:
    """Samples taken at or after ``since``, oldest first."""
    return store.query(
        "SELECT at, unsent, parked, acked_total FROM web_queue_samples WHERE at >= ? ORDER BY at", [iso(since)]
    )
