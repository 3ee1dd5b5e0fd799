"""Downlink dead letters: platform messages that failed the contract, kept with their reason for IT.

A dead letter keeps what failed (``what``, ``field``, ``reason``: value-free words from
:class:`~gateway.errors.ContractError`), its size, and its first :data:`PAYLOAD_KEEP_BYTES` bytes. The
payload may hold patient data, so it lives only here, behind the store, and is never logged nor shown on
the status page; ``gateway outbox dead-letters --show ID`` prints it (escaped) for IT.

The same (topic, payload) is kept once: the broker redelivers a message we had not acknowledged when the
link or the daemon stopped. At most :data:`KEEP_ROWS` rows are kept (newest); ``total`` counts every one
ever kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from gateway.store.db import Store, iso

PAYLOAD_KEEP_BYTES = 64 * 1024
KEEP_ROWS = 1000
TOTAL_KEY = "downlink_dead_letters_total"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One downlink message that failed the contract (no payload: see :func:`payload_of`)."""

    id: int
    received_at: str
    topic: str
    what: str
    field: str
    reason: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class DeadLetterSummary:
    """For the status page and the CLI: how many, and the newest ones (no payloads)."""

    total: int
    kept: int
    recent: tuple[DeadLetter, ...]


def add_dead_letter(store: Store, *, topic: str, what: str, field: str, reason: str, payload: bytes) -> bool:
    """Keep one failed downlink message (durably: the broker is acknowledged after this commits).

    False when the same (topic, payload) is already kept (a redelivery).
    """
    with store.transaction(durable=True) as db:
        cur = db.execute(
            "INSERT OR IGNORE INTO downlink_dead_letters (received_at, topic, what, field, reason, size_bytes, "
            "payload, payload_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                iso(store.clock.utc_now()),
                topic,
                what,
                field,
                reason,
                len(payload),
                payload[:PAYLOAD_KEEP_BYTES],
                hashlib.sha256(payload).hexdigest(),
            ],
        )
        if not cur.rowcount:
            return False
        newest = cur.lastrowid or 0
        db.execute("DELETE FROM downlink_dead_letters WHERE id <= ?", [newest - KEEP_ROWS])
        db.execute(
            "INSERT INTO kv (key, value, updated_at) VALUES (?, '1', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1, updated_at = excluded.updated_at",
            [TOTAL_KEY, iso(store.clock.utc_now())],
        )
        return True


def summary(store: Store, *, limit: int = 10) -> DeadLetterSummary:
    """The count ever kept, the count still kept, and the ``limit`` newest (no payloads)."""
    rows = store.query(
        "SELECT id, received_at, topic, what, field, reason, size_bytes FROM downlink_dead_letters "
        "ORDER BY id DESC LIMIT ?",
        [limit],
    )
    kept = int(store.scalar("SELECT count(*) FROM downlink_dead_letters"))
    total = int(store.get_kv(TOTAL_KEY) or 0)
    return DeadLetterSummary(total=total, kept=kept, recent=tuple(DeadLetter(**row) for row in rows))


def payload_of(store: Store, dead_letter_id: int) -> tuple[bytes, int] | None:
    """The kept bytes of one dead letter and its full size (None when unknown): for IT, never for logs."""
    rows: list[dict[str, Any]] = store.query(
        "SELECT payload, size_bytes FROM downlink_dead_letters WHERE id = ?", [dead_letter_id]
    )
    return None if not rows else (bytes(rows[0]["payload"]), int(rows[0]["size_bytes"]))
