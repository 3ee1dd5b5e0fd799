"""Disk policy: prune what the platform has confirmed, after the retention period; never anything unsent.

What :func:`prune` removes, all older than ``retention_days`` (by the gateway's ``stored_at``/``acked_at``):

- readings and captures whose outbox messages are **all acked** (a record whose message is pending, sent,
  parked, or missing stays, whatever its age);
- image files, only once no remaining capture uses the hash and no unconfirmed outbox row (an image
  chunk) still reads from it; rows are deleted first and committed, files after, so a crash in between
  leaves at worst an orphan file, never a row pointing at a missing image;
- acked outbox rows no remaining record refers to, old operational events, and finished desk sessions left
  with no records. The audit trail is never pruned.

:class:`gateway.retention.RetentionTask` is the daemon component that runs it every few hours.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.store.db import Store, iso

_logger = logging.getLogger(__name__)

BATCH = 500
"""Rows deleted per transaction: keeps each write short (the daemon's loop and the pages share the store)."""


@dataclass(slots=True)
class PruneResult:
    """What one :func:`prune` run removed (counts only: no patient data)."""

    cutoff: str
    readings: int = 0
    captures: int = 0
    image_files: int = 0
    image_bytes: int = 0
    outbox: int = 0
    events: int = 0
    sessions: int = 0
    skipped: str | None = None
    missing_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_UNCONFIRMED = "SELECT 1 FROM outbox o WHERE o.state != 'acked' AND (o.message_id = {t}.message_id{extra})"
_CONFIRMED = "EXISTS (SELECT 1 FROM outbox a WHERE a.message_id = {t}.message_id AND a.state = 'acked')"

_PRUNABLE_READINGS = (
    "SELECT r.id FROM readings r WHERE r.stored_at < ? "
    f"AND {_CONFIRMED.format(t='r')} "
    f"AND NOT EXISTS ({_UNCONFIRMED.format(t='r', extra='')}) LIMIT {BATCH}"
)
_CAPTURE_ROWS = " OR o.record_ref = 'capture:' || c.capture_id"  # the image chunks of the capture
_PRUNABLE_CAPTURES = (
    "SELECT c.capture_id, c.sha256, c.image_path FROM captures c WHERE c.stored_at < ? "
    f"AND {_CONFIRMED.format(t='c')} "
    f"AND NOT EXISTS ({_UNCONFIRMED.format(t='c', extra=_CAPTURE_ROWS)}) "
    f"LIMIT {BATCH}"
)


def _image_path(store: Store, stored: str) -> Path | None:
    """The file a capture row names, if it lies inside the image directory (never delete elsewhere)."""
    path = Path(stored)
    if not path.is_absolute():
        path = store.image_dir / path
    root = store.image_dir.resolve()
    resolved = path.resolve()
    return resolved if resolved.is_relative_to(root) and resolved != root else None


def _image_in_use(store: Store, sha256: str) -> bool:
    if store.scalar("SELECT 1 FROM captures WHERE sha256 = ? LIMIT 1", [sha256]):
        return True
    return bool(
        store.scalar(
            "SELECT 1 FROM outbox WHERE state != 'acked' AND body_ref LIKE ? LIMIT 1",
            [f"image:{sha256}:%"],
        )
    )


def prune(store: Store, retention_days: int, *, now: datetime | None = None) -> PruneResult:
    """Remove confirmed data older than ``retention_days`` (see the module docstring for the rules)."""
    now = now or store.clock.utc_now()
    cutoff = iso(now - timedelta(days=retention_days))
    result = PruneResult(cutoff=cutoff)

    while ids := [row["id"] for row in store.query(_PRUNABLE_READINGS, [cutoff])]:
        with store.transaction(durable=False) as db:
            db.execute(f"DELETE FROM readings WHERE id IN ({', '.join('?' * len(ids))})", ids)
        result.readings += len(ids)

    while rows := store.query(_PRUNABLE_CAPTURES, [cutoff]):
        with store.transaction(durable=False) as db:
            db.execute(
                f"DELETE FROM captures WHERE capture_id IN ({', '.join('?' * len(rows))})",
                [r["capture_id"] for r in rows],
            )
        result.captures += len(rows)
        # The rows are gone (committed); now the files nobody needs any more.
        for row in {r["sha256"]: r for r in rows}.values():
            if _image_in_use(store, row["sha256"]):
                continue
            path = _image_path(store, row["image_path"])
            if path is None:
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                result.missing_files.append(row["sha256"])
                continue
            except OSError as exc:
                raise StoreError(f"pruning image {row['sha256'][:12]}: {exc.strerror}") from exc
            result.image_files += 1
            result.image_bytes += size

    with store.transaction(durable=False) as db:
        result.outbox = db.execute(
            "DELETE FROM outbox WHERE state = 'acked' AND created_at < ? "
            "AND message_id NOT IN (SELECT message_id FROM readings) "
            "AND message_id NOT IN (SELECT message_id FROM captures) "
            "AND (record_ref IS NULL OR record_ref NOT LIKE 'capture:%' "
            "     OR substr(record_ref, 9) NOT IN (SELECT capture_id FROM captures))",
            [cutoff],
        ).rowcount
        result.events = db.execute("DELETE FROM events WHERE at < ?", [cutoff]).rowcount
        result.sessions = db.execute(
            "DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ? "
            "AND session_id NOT IN (SELECT session_id FROM readings WHERE session_id IS NOT NULL) "
            "AND session_id NOT IN (SELECT session_id FROM captures WHERE session_id IS NOT NULL)",
            [cutoff],
        ).rowcount
    _logger.info(
        "retention: pruned %d readings, %d captures, %d image files (%d bytes), %d outbox rows, %d events, "
        "%d sessions older than %s",
        result.readings, result.captures, result.image_files, result.image_bytes, result.outbox, result.events,
        result.sessions, cutoff,
    )  # fmt: skip
    return result
