"""The outbox: every up message, written in the same transaction as the record it carries.

Row lifecycle, the one table of it (``TRANSITIONS``, with ``GUARDS`` on guarded transitions)::

    pending --claim--> sent --ack--> acked
       ^                 |
       +----timeout------+            (also every 'sent' row at start-up: re-send, the platform dedupes)
    pending|sent --park--> parked --retry--> pending
    pending --ack--> acked            only if sent before (sent_at set): an ack for a message we had
                                      already requeued. An ack naming a message never sent is a platform
                                      bug or a forged ack; it is not applied (Outbox.ack reports it).

All outbox SQL lives here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from gateway.records import OutboxMessage
from gateway.store.db import Store, iso, new_id

TRANSITIONS: dict[tuple[str, str], str] = {
    ("pending", "claim"): "sent",
    ("sent", "ack"): "acked",
    ("pending", "ack"): "acked",
    ("sent", "timeout"): "pending",
    ("pending", "park"): "parked",
    ("sent", "park"): "parked",
    ("parked", "retry"): "pending",
}
GUARDS: dict[tuple[str, str], str] = {
    ("pending", "ack"): "sent_at IS NOT NULL",
}
"""SQL conditions a row must also meet for a transition: a pending row is acked only if it was sent before."""


def _from(event: str) -> tuple[str, ...]:
    return tuple(sorted(src for (src, ev) in TRANSITIONS if ev == event))


def _to(event: str) -> str:
    (target,) = {dst for (_, ev), dst in TRANSITIONS.items() if ev == event}
    return target


def _in(states: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{s}'" for s in states) + ")"


def _where_from(event: str, column: str = "state") -> str:
    """SQL: the row is in a state ``event`` leaves, and meets that transition's guard if it has one."""
    plain = [s for s in _from(event) if (s, event) not in GUARDS]
    parts = [f"{column} IN {_in(plain)}"] if plain else []
    parts += [f"({column} = '{s}' AND {GUARDS[(s, event)]})" for s in _from(event) if (s, event) in GUARDS]
    return "(" + " OR ".join(parts) + ")"


@dataclass(frozen=True, slots=True)
class AckResult:
    """What a platform ack changed: ``applied`` rows acked; ``never_sent``: ids it named that are still
    pending and were never sent (not applied)."""

    applied: int
    never_sent: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counts per kind and state, and the age anchor of the oldest unsent message."""

    counts: dict[str, dict[str, int]]
    oldest_unsent_created_at: str | None
    total_unsent: int
    parked: int


def enqueue(
    db: Database,
    *,
    kind: str,
    topic: str,
    created_at: datetime,
    payload: bytes | None = None,
    body_ref: str | None = None,
    properties: Mapping[str, str] | None = None,
    record_ref: str | None = None,
    message_id: str | None = None,
) -> str:
    """Add one message; call inside the same ``store.transaction()`` as the record it carries."""
    message_id = message_id or new_id()
    db.execute(
        "INSERT INTO outbox (message_id, kind, topic, payload, body_ref, properties, record_ref, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            message_id,
            kind,
            topic,
            payload,
            body_ref,
            json.dumps(dict(properties or {}), sort_keys=True),
            record_ref,
            iso(created_at),
        ],
    )
    return message_id


_MESSAGE_COLUMNS = "seq, message_id, kind, topic, payload, body_ref, properties, attempts, created_at"
"""What an :class:`OutboxMessage` needs, nothing more: the claim runs once per message drained."""


def _row_to_message(row: Mapping[str, Any]) -> OutboxMessage:
    properties = row["properties"]
    return OutboxMessage(
        seq=row["seq"],
        message_id=row["message_id"],
        kind=row["kind"],
        topic=row["topic"],
        payload=row["payload"],
        body_ref=row["body_ref"],
        # most rows (JSON payloads) carry none: skip the parse on the drain's hot path
        properties={} if properties == "{}" else json.loads(properties),
        attempts=row["attempts"],
        created_at=row["created_at"],
    )


class Outbox:
    """Outbox operations for the forwarder and the operations CLI."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def claim_batch(self, limit: int) -> list[OutboxMessage]:
        """Take up to ``limit`` pending messages in order and mark them sent."""
        if limit <= 0:
            return []
        with self.store.transaction(durable=False) as db:
            rows = list(
                db.query(
                    f"SELECT {_MESSAGE_COLUMNS} FROM outbox WHERE {_where_from('claim')} ORDER BY seq LIMIT ?",
                    [limit],
                )
            )
            if rows:
                db.execute(
                    f"UPDATE outbox SET state = '{_to('claim')}', attempts = attempts + 1, sent_at = ? "
                    f"WHERE seq IN ({', '.join('?' * len(rows))})",
                    [iso(self.store.clock.utc_now()), *(r["seq"] for r in rows)],
                )
        # Report the attempt this claim starts (the row now says the same).
        return [_row_to_message({**r, "attempts": r["attempts"] + 1}) for r in rows]

    def ack(self, message_ids: Iterable[str]) -> AckResult:
        """Mark messages the platform has durably stored: those sent, or requeued after being sent.

        Unknown and already-acked ids are ignored (acks repeat); ids of messages never sent are not applied
        and come back in ``never_sent``.
        """
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return AckResult(0)
        changed = 0
        never_sent: list[str] = []
        with self.store.transaction(durable=True) as db:
            now = iso(self.store.clock.utc_now())
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ", ".join("?" * len(part))
                cur = db.execute(
                    f"UPDATE outbox SET state = '{_to('ack')}', acked_at = ? "
                    # "+state": look rows up by message_id; the (state, seq) index would scan the whole backlog
                    f"WHERE {_where_from('ack', '+state')} AND message_id IN ({marks})",
                    [now, *part],
                )
                changed += cur.rowcount
                if cur.rowcount < len(part):  # only then can some be never-sent ones
                    never_sent += [
                        row[0]
                        for row in db.execute(
                            f"SELECT message_id FROM outbox WHERE +state = 'pending' AND sent_at IS NULL "
                            f"AND message_id IN ({marks})",
                            part,
                        )
                    ]
        return AckResult(changed, tuple(never_sent))

    def requeue(self, message_ids: Iterable[str]) -> int:
        """Put sent-but-unconfirmed messages back to pending (ack timeout)."""
        ids = list(message_ids)
        if not ids:
            return 0
        with self.store.transaction(durable=False) as db:
            cur = db.execute(
                f"UPDATE outbox SET state = '{_to('timeout')}' WHERE {_where_from('timeout')} "
                f"AND message_id IN ({', '.join('?' * len(ids))})",
                ids,
            )
            return cur.rowcount

    def requeue_all_sent(self) -> int:
        """At start-up: whatever was in flight when we stopped goes out again."""
        with self.store.transaction(durable=False) as db:
            cur = db.execute(f"UPDATE outbox SET state = '{_to('timeout')}' WHERE {_where_from('timeout')}")
            return cur.rowcount

    def park(self, message_id: str, reason: str) -> None:
        """Set a message aside that the broker refuses; it stays stored and can be retried."""
        with self.store.transaction(durable=True) as db:
            db.execute(
                f"UPDATE outbox SET state = '{_to('park')}', parked_reason = ? "
                f"WHERE message_id = ? AND {_where_from('park')}",
                [reason, message_id],
            )

    def retry_parked(self, kind: str | None = None) -> int:
        """Put parked messages back in the queue (after IT fixed the cause)."""
        where, params = ("", []) if kind is None else (" AND kind = ?", [kind])
        with self.store.transaction(durable=True) as db:
            cur = db.execute(
                f"UPDATE outbox SET state = '{_to('retry')}', parked_reason = NULL WHERE {_where_from('retry')}{where}",
                params,
            )
            return cur.rowcount

    def stats(self) -> OutboxStats:
        """Counts per kind and state (one GROUP BY), oldest unsent message time."""
        counts: dict[str, dict[str, int]] = {}
        for row in self.store.query("SELECT kind, state, count(*) AS n FROM outbox GROUP BY kind, state"):
            counts.setdefault(row["kind"], {})[row["state"]] = row["n"]
        oldest = self.store.scalar(
            "SELECT created_at FROM outbox WHERE state IN ('pending', 'sent') ORDER BY seq LIMIT 1"
        )
        unsent = sum(n for by_state in counts.values() for s, n in by_state.items() if s in ("pending", "sent"))
        parked = sum(by_state.get("parked", 0) for by_state in counts.values())
        return OutboxStats(counts=counts, oldest_unsent_created_at=oldest, total_unsent=unsent, parked=parked)

    def parked(self, limit: int = 50) -> list[dict[str, Any]]:
        """Parked messages with their reasons (no payloads)."""
        return self.store.query(
            "SELECT seq, message_id, kind, topic, parked_reason, created_at FROM outbox "
            "WHERE state = 'parked' ORDER BY seq LIMIT ?",
            [limit],
        )

    def state_of(self, message_id: str) -> str | None:
        value = self.store.scalar("SELECT state FROM outbox WHERE message_id = ?", [message_id])
        return None if value is None else str(value)

    def ack_activity(self) -> tuple[int, str | None]:
        """Acked messages still kept, and when the newest ack arrived (drain rate, 'last ack' on the status page)."""
        row = self.store.query("SELECT count(*) AS n, max(acked_at) AS last FROM outbox WHERE state = 'acked'")[0]
        return int(row["n"]), row["last"]
