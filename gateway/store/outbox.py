"""The outbox: every up message, written in the same transaction as the record it carries.

Row lifecycle, the one table of it (``TRANSITIONS``, with ``GUARDS`` on guarded transitions)::

    pending --claim--> sent --ack--> acked
       ^                 |
       +----timeout------+            (also every 'sent' row at start-up: re-send, the platform dedupes)
    pending|sent --park--> parked --retry--> pending
    pending --ack--> acked            only if sent before (sent_at set): an ack for a message we had
                                      already requeued. An ack naming a message never sent is a platform
                                      bug or a forged ack; it is not applied (Outbox.ack reports it).

Storage (migration ``0007_outbox_state_apart``): ``outbox`` holds a message's identity and lifecycle, the
narrow row every transition rewrites; ``outbox_bodies`` holds what is sent (topic, payload or body_ref,
properties), written once by :func:`enqueue` and never updated: claim, ack, requeue, park and retry touch
only ``outbox``. Once the platform has acked a message its body is no longer needed (nothing sends an acked
message again); the prune deletes it (:func:`drop_acked_bodies`). ``outbox_counts`` holds the counts per
(kind, state), maintained by triggers in the transaction of every write, so :meth:`Outbox.stats` reads a
few rows whatever the history's size.

``sent`` is a stored state, not only the forwarder's memory: every ``sent`` row is requeued at start, but a
platform ack for a message sent before a restart arrives after it (the broker keeps it for our persistent
session), and the guard on ``pending --ack--> acked`` needs to know the message went out (``sent_at``); the
write is one narrow row per message in a non-durable transaction.

All outbox SQL lives here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlite_utils import Database

from gateway.errors import StoreError
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
    """Add one message (its narrow row and its body); call inside the ``store.transaction()`` of its record."""
    if payload is None and body_ref is None:
        raise ValueError("a message needs a payload or a body_ref")
    message_id = message_id or new_id()
    cur = db.execute(
        "INSERT INTO outbox (message_id, kind, record_ref, created_at) VALUES (?, ?, ?, ?)",
        [message_id, kind, record_ref, iso(created_at)],
    )
    db.execute(
        "INSERT INTO outbox_bodies (seq, topic, payload, body_ref, properties) VALUES (?, ?, ?, ?, ?)",
        [cur.lastrowid, topic, payload, body_ref, json.dumps(dict(properties or {}), sort_keys=True)],
    )
    return message_id


_MESSAGE_COLUMNS = (
    # a pending message always has its body (bodies go only once acked); a missing one is sent as nothing to
    # send: the forwarder parks it ("message body cannot be read"). ``attempts + 1``: the attempt this claim
    # starts (the row says the same once updated).
    "o.seq, o.message_id, o.kind, coalesce(b.topic, ''), b.payload, b.body_ref, b.properties, o.attempts + 1, "
    "o.created_at"
)
"""What an :class:`OutboxMessage` needs, in its field order: the claim runs once per message drained."""
_NO_PROPERTIES: Mapping[str, str] = MappingProxyType({})


def _row_to_message(row: Sequence[Any]) -> OutboxMessage:
    seq, message_id, kind, topic, payload, body_ref, properties, attempts, created_at = row
    # positional, and most rows (JSON payloads) carry no properties: skip the parse on the drain's hot path
    return OutboxMessage(
        seq,
        message_id,
        kind,
        topic,
        payload,
        body_ref,
        _NO_PROPERTIES if properties in (None, "{}") else json.loads(properties),
        attempts,
        created_at,
    )


UNACKED = "state != 'acked'"
"""The state index (``outbox_unacked``, migration ``0010_outbox_unacked_index``) holds only the messages not yet
acked: a query that should use it says this too (SQLite uses a partial index only for queries that do)."""

# The statements of the drain's hot path, built once from the lifecycle table.
_CLAIM = (
    f"SELECT {_MESSAGE_COLUMNS} FROM outbox o LEFT JOIN outbox_bodies b ON b.seq = o.seq "
    f"WHERE {_where_from('claim', 'o.state')} AND o.{UNACKED} ORDER BY o.seq LIMIT ?"
)
# The claim marks what its SELECT returned, in the same transaction (one snapshot): the first rows a claim leaves,
# up to the last seq it took. One statement whatever the batch's size (an IN list of n marks is a new statement
# for each n, parsed again: a drain claims what each platform ack frees, a few dozen at a time).
_SENT = (
    f"UPDATE outbox SET state = '{_to('claim')}', attempts = attempts + 1, sent_at = ? "
    f"WHERE {_where_from('claim')} AND {UNACKED} AND seq <= ?"
)
# "+state": look rows up by message_id; the state index would walk the whole backlog
_ACKED = (
    f"UPDATE outbox SET state = '{_to('ack')}', acked_at = ? WHERE {_where_from('ack', '+state')} AND message_id IN "
)
_NEVER_SENT = "SELECT message_id FROM outbox WHERE +state = 'pending' AND sent_at IS NULL AND message_id IN "
_REQUEUE = f"UPDATE outbox SET state = '{_to('timeout')}' WHERE {_where_from('timeout', '+state')} AND message_id IN "
_REQUEUE_ALL = f"UPDATE outbox SET state = '{_to('timeout')}' WHERE {_where_from('timeout')} AND {UNACKED}"
_PARK = (
    f"UPDATE outbox SET state = '{_to('park')}', parked_reason = ? "
    f"WHERE message_id = ? AND {_where_from('park', '+state')}"
)
_RETRY = f"UPDATE outbox SET state = '{_to('retry')}', parked_reason = NULL WHERE {_where_from('retry')} AND {UNACKED}"
_LAST_ACK = (
    "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)


def _marks(n: int) -> str:
    return "(" + ", ".join("?" * n) + ")"


IN_MAX = 512
"""Most values in one IN list of the ack and the requeue (longer lists go in parts)."""
_IN_SIZES = (*(2**i for i in range(10)), IN_MAX)
_IN_MARKS = {n: _marks(n) for n in _IN_SIZES}


def _padded(values: Sequence[str]) -> tuple[str, list[str | None]]:
    """An IN list for up to :data:`IN_MAX` values, padded with NULLs (which match nothing) to the next power of
    two: a handful of statement texts, so sqlite3's statement cache keeps them parsed across acks of any size."""
    size = next(n for n in _IN_SIZES if n >= len(values))  # a StopIteration past IN_MAX: the callers split
    return _IN_MARKS[size], [*values, *([None] * (size - len(values)))]


LAST_ACK_KEY = "outbox_last_ack_at"
"""kv key: when the newest platform ack changed a message (the status page's "last ack")."""


class Outbox:
    """Outbox operations for the forwarder and the operations CLI."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def claim_batch(self, limit: int) -> list[OutboxMessage]:
        """Take up to ``limit`` pending messages in order and mark them sent (only their narrow rows change)."""
        if limit <= 0:
            return []
        with self.store.transaction(durable=False) as db:
            rows = db.conn.execute(_CLAIM, [limit]).fetchall()
            if rows:
                marked = db.conn.execute(_SENT, [iso(self.store.clock.utc_now()), rows[-1][0]]).rowcount
                if marked != len(rows):  # cannot happen in one snapshot; never send what the table does not say
                    raise StoreError(f"claim marked {marked} messages for {len(rows)} read")
        return [_row_to_message(r) for r in rows]

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
            for start in range(0, len(ids), IN_MAX):
                part = ids[start : start + IN_MAX]
                marks, params = _padded(part)
                cur = db.conn.execute(_ACKED + marks, [now, *params])
                changed += cur.rowcount
                if cur.rowcount < len(part):  # only then can some be never-sent ones
                    never_sent += [row[0] for row in db.conn.execute(_NEVER_SENT + marks, params)]
            if changed:
                db.conn.execute(_LAST_ACK, [LAST_ACK_KEY, now, now])
        return AckResult(changed, tuple(never_sent))

    def requeue(self, message_ids: Iterable[str]) -> int:
        """Put sent-but-unconfirmed messages back to pending (ack timeout)."""
        ids = list(message_ids)
        if not ids:
            return 0
        requeued = 0
        with self.store.transaction(durable=False) as db:
            for start in range(0, len(ids), IN_MAX):
                marks, params = _padded(ids[start : start + IN_MAX])
                requeued += db.conn.execute(_REQUEUE + marks, params).rowcount
        return requeued

    def requeue_all_sent(self) -> int:
        """At start-up: whatever was in flight when we stopped goes out again."""
        with self.store.transaction(durable=False) as db:
            return int(db.conn.execute(_REQUEUE_ALL).rowcount)

    def park(self, message_id: str, reason: str) -> None:
        """Set a message aside that the broker refuses; it stays stored and can be retried."""
        with self.store.transaction(durable=True) as db:
            db.conn.execute(_PARK, [reason, message_id])

    def retry_parked(self, kind: str | None = None) -> int:
        """Put parked messages back in the queue (after IT fixed the cause)."""
        where, params = ("", []) if kind is None else (" AND kind = ?", [kind])
        with self.store.transaction(durable=True) as db:
            return int(db.conn.execute(_RETRY + where, params).rowcount)

    def stats(self) -> OutboxStats:
        """Counts per kind and state (the maintained counts: a few rows, whatever the history's size), and the
        creation time of the oldest unsent message (the first pending or sent row of the state index)."""
        counts: dict[str, dict[str, int]] = {}
        for row in self.store.query("SELECT kind, state, n FROM outbox_counts WHERE n > 0 ORDER BY kind, state"):
            counts.setdefault(row["kind"], {})[row["state"]] = row["n"]
        oldest = self.store.scalar(
            "SELECT created_at FROM outbox WHERE seq = (SELECT min(first) FROM ("
            f"SELECT min(seq) AS first FROM outbox WHERE state = 'pending' AND {UNACKED} "
            f"UNION ALL SELECT min(seq) FROM outbox WHERE state = 'sent' AND {UNACKED}))"
        )
        unsent = sum(n for by_state in counts.values() for s, n in by_state.items() if s in ("pending", "sent"))
        parked = sum(by_state.get("parked", 0) for by_state in counts.values())
        return OutboxStats(counts=counts, oldest_unsent_created_at=oldest, total_unsent=unsent, parked=parked)

    def parked(self, limit: int = 50) -> list[dict[str, Any]]:
        """Parked messages with their reasons (no payloads)."""
        return self.store.query(
            "SELECT o.seq, o.message_id, o.kind, b.topic, o.parked_reason, o.created_at FROM outbox o "
            "LEFT JOIN outbox_bodies b ON b.seq = o.seq "
            f"WHERE o.state = 'parked' AND o.{UNACKED} ORDER BY o.seq LIMIT ?",
            [limit],
        )

    def state_of(self, message_id: str) -> str | None:
        """The state of one message (None when unknown, or pruned)."""
        value = self.store.scalar("SELECT state FROM outbox WHERE message_id = ?", [message_id])
        return None if value is None else str(value)

    def ack_activity(self) -> tuple[int, str | None]:
        """Acked messages still kept, and when the newest ack arrived (drain rate, 'last ack' on the status page)."""
        acked = self.store.scalar("SELECT coalesce(sum(n), 0) FROM outbox_counts WHERE state = 'acked'")
        return int(acked), self.store.get_kv(LAST_ACK_KEY)

    def body_of(self, message_id: str) -> bytes | None:
        """The payload stored for one message (None when it has none: sent by reference, or dropped once
        acked). For tests and IT tools; the drain reads bodies in :meth:`claim_batch`."""
        value = self.store.scalar(
            "SELECT b.payload FROM outbox o JOIN outbox_bodies b ON b.seq = o.seq WHERE o.message_id = ?",
            [message_id],
        )
        return None if value is None else bytes(value)


def drop_acked_bodies(store: Store, *, after_seq: int = 0, limit: int = 500) -> tuple[int, int | None]:
    """Delete the bodies of up to ``limit`` acked messages with ``seq > after_seq`` (one short transaction).

    Returns how many went and the last seq looked at (the next call's ``after_seq``; None when done).
    """
    with store.transaction(durable=False) as db:
        seqs = [
            row[0]
            for row in db.conn.execute(
                "SELECT b.seq FROM outbox_bodies b JOIN outbox o ON o.seq = b.seq "
                # "+o.state": walk the bodies (few) by seq, never the state index's million acked rows
                "WHERE b.seq > ? AND +o.state = 'acked' ORDER BY b.seq LIMIT ?",
                [after_seq, limit],
            )
        ]
        if not seqs:
            return 0, None
        db.conn.execute(f"DELETE FROM outbox_bodies WHERE seq IN ({', '.join('?' * len(seqs))})", seqs)
    return len(seqs), seqs[-1]
