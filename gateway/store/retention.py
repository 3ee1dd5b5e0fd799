"""Disk policy: prune what the platform has confirmed, after the retention period; never anything unsent.

What the prune removes, all older than ``retention_days`` (by the gateway's ``stored_at``/``created_at``/``at``):

- readings (glucose and blood pressure), control-solution (QC) results and captures whose outbox messages are
  **all acked** (a record whose message is pending, sent, parked, or missing stays, whatever its age), each
  together with its own messages;
- image files, only once no remaining capture uses the hash and no unconfirmed outbox row (an image
  chunk) still reads from it; rows are deleted first and committed, files after, so a crash in between
  leaves at worst an orphan file, never a row pointing at a missing image;
- acked event messages, old operational events, and finished desk sessions left with no records. The audit
  trail is never pruned.

And, whatever their age, the bodies of acked messages (``outbox_bodies``): nothing sends an acked message
again, so its payload is dead weight (~0.7 kB per reading); the message's narrow row stays with its record.

**Bounded work.** A :class:`Pruner` works in passes. A pass runs each step once, and each step is one short
transaction that deletes at most ``chunk`` rows from any one table, found through an index from where the
step's previous pass stopped (never a scan of every reading, never ``NOT IN`` over a whole table), so a pass
costs about the same on a store of 10^6 readings as on a small one. :func:`prune` runs passes until none is
left (the CLI, tests); :class:`gateway.retention.RetentionTask`, the daemon component, runs them in a worker
thread and yields to the event loop between passes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.store.db import Store, iso
from gateway.store.outbox import drop_acked_bodies

_logger = logging.getLogger(__name__)

CHUNK = 500
"""Rows deleted from any one table per transaction: keeps each write short (the daemon's loop and the pages
share the store)."""


@dataclass(slots=True)
class PruneResult:
    """What one prune run removed (counts only: no patient data)."""

    cutoff: str
    readings: int = 0
    qc_results: int = 0
    blood_pressure: int = 0
    captures: int = 0
    image_files: int = 0
    image_bytes: int = 0
    outbox: int = 0
    """Outbox messages removed (with their records, or acked event messages)."""
    bodies: int = 0
    """Bodies (payloads) of acked messages removed."""
    events: int = 0
    sessions: int = 0
    passes: int = 0
    skipped: str | None = None
    missing_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able counts (status page, CLI)."""
        return asdict(self)


def _marks(values: list[Any]) -> str:
    return ", ".join("?" * len(values))


_READINGS = (
    # Driven by readings_stored_at (blood_pressure_stored_at) from the previous pass's last row; "+o.state": the
    # message is looked up by its message_id, never by the state index (which would list every acked message).
    "SELECT r.id, r.stored_at, o.seq FROM {table} r JOIN outbox o ON o.message_id = r.message_id "
    "WHERE r.stored_at < ? AND (r.stored_at, r.id) > (?, ?) AND +o.state = 'acked' "
    "ORDER BY r.stored_at, r.id LIMIT ?"
)
READING_TABLES = ("readings", "qc_results", "blood_pressure")
"""Tables of records that name their outbox message (``message_id``) and carry ``stored_at``: each is pruned by
:data:`_READINGS` (a QC result's message names it by record_ref 'qc:<qc_id>' and the row names the message: the
join is by message_id, as for readings)."""
_CAPTURES = (
    "SELECT c.capture_id, c.sha256, c.image_path, o.seq FROM captures c JOIN outbox o ON o.message_id = c.message_id "
    "WHERE c.capture_id > ? AND c.stored_at < ? AND +o.state = 'acked' "
    # every message of the capture (its image chunks) confirmed: outbox_records finds them
    "AND NOT EXISTS (SELECT 1 FROM outbox u WHERE u.record_ref = 'capture:' || c.capture_id AND u.state != 'acked') "
    "ORDER BY c.capture_id LIMIT ?"
)
_EVENT_MESSAGES = (
    # event messages name their events row ('event:<id>'): outbox_records holds them apart from the readings'
    "SELECT seq FROM outbox WHERE record_ref >= 'event:' AND record_ref < 'event;' AND +state = 'acked' "
    "AND created_at < ? LIMIT ?"
)
_SESSIONS = (
    "SELECT session_id FROM sessions s WHERE session_id > ? AND ended_at IS NOT NULL AND ended_at < ? "
    "AND NOT EXISTS (SELECT 1 FROM readings r WHERE r.session_id = s.session_id) "
    "AND NOT EXISTS (SELECT 1 FROM blood_pressure b WHERE b.session_id = s.session_id) "
    "AND NOT EXISTS (SELECT 1 FROM qc_results q WHERE q.session_id = s.session_id) "
    "AND session_id NOT IN (SELECT session_id FROM captures WHERE session_id IS NOT NULL) "
    "ORDER BY session_id LIMIT ?"
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
            # bodies are kept only for unsent messages (and acked ones not yet dropped): a short walk
            "SELECT 1 FROM outbox_bodies b JOIN outbox o ON o.seq = b.seq "
            "WHERE b.body_ref LIKE ? AND +o.state != 'acked' LIMIT 1",
            [f"image:{sha256}:%"],
        )
    )


class Pruner:
    """One prune run, in bounded passes (see the module docstring).

    ``by_age=False`` only drops the bodies of acked messages, which needs no clock: the daemon does that
    much even while the clock is not trusted.
    """

    def __init__(
        self,
        store: Store,
        retention_days: int,
        *,
        now: datetime | None = None,
        chunk: int = CHUNK,
        by_age: bool = True,
    ) -> None:
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        self.store = store
        self.chunk = chunk
        now = now or store.clock.utc_now()
        self.cutoff = iso(now - timedelta(days=retention_days))
        self.result = PruneResult(cutoff=self.cutoff if by_age else "")
        self._after: dict[str, tuple[str, int]] = dict.fromkeys(READING_TABLES, ("", 0))
        """Per table, the (stored_at, id) the step's next pass starts after."""
        self._capture_after = ""
        self._body_after: int | None = 0
        self._session_after = ""
        self._steps = (
            [
                self._readings,
                self._qc_results,
                self._blood_pressure,
                self._captures,
                self._event_messages,
                self._bodies,
                self._events,
                self._sessions,
            ]
            if by_age
            else [self._bodies]
        )

    @property
    def done(self) -> bool:
        """No step has anything left to do."""
        return not self._steps

    def run_pass(self) -> bool:
        """One pass: each unfinished step once (one short transaction each). True while work remains."""
        self._steps = [step for step in self._steps if step()]
        self.result.passes += 1
        return not self.done

    def run(self) -> PruneResult:
        """Passes until done; the result, logged (counts only)."""
        while self.run_pass():
            pass
        self.log()
        return self.result

    def log(self) -> None:
        """The run's counts in the log (no patient data)."""
        r = self.result
        _logger.info(
            "retention: pruned %d readings, %d QC results, %d blood pressure readings, %d captures, %d image files "
            "(%d bytes), %d outbox messages, %d acked bodies, %d events, %d sessions older than %s in %d passes",
            r.readings, r.qc_results, r.blood_pressure, r.captures, r.image_files, r.image_bytes, r.outbox, r.bodies,
            r.events, r.sessions, r.cutoff or "-", r.passes,
        )  # fmt: skip

    # -- the steps: each does at most one chunk and says whether it may have more ----------------------------
    def _delete_messages(self, db: Any, seqs: list[int]) -> None:
        """Messages (narrow rows and any bodies left) of records going in the same transaction."""
        if seqs:
            db.execute(f"DELETE FROM outbox WHERE seq IN ({_marks(seqs)})", seqs)
            db.execute(f"DELETE FROM outbox_bodies WHERE seq IN ({_marks(seqs)})", seqs)
            self.result.outbox += len(seqs)

    def _records(self, table: str) -> tuple[int, bool]:
        """One chunk of confirmed old rows of ``table`` (one of :data:`READING_TABLES`) with their messages: how
        many went, and whether there may be more. Old rows whose messages are not acked yet were passed over: the
        next pass starts after them."""
        at, after = self._after[table]
        rows = self.store.query(_READINGS.format(table=table), [self.cutoff, at, after, self.chunk])
        if not rows:
            return 0, False
        ids = [r["id"] for r in rows]
        with self.store.transaction(durable=False) as db:
            db.execute(f"DELETE FROM {table} WHERE id IN ({_marks(ids)})", ids)
            self._delete_messages(db, [r["seq"] for r in rows])
        self._after[table] = (rows[-1]["stored_at"], rows[-1]["id"])
        return len(ids), len(rows) == self.chunk

    def _readings(self) -> bool:
        deleted, more = self._records("readings")
        self.result.readings += deleted
        return more

    def _qc_results(self) -> bool:
        deleted, more = self._records("qc_results")
        self.result.qc_results += deleted
        return more

    def _blood_pressure(self) -> bool:
        deleted, more = self._records("blood_pressure")
        self.result.blood_pressure += deleted
        return more

    def _captures(self) -> bool:
        rows = self.store.query(_CAPTURES, [self._capture_after, self.cutoff, self.chunk])
        if not rows:
            return False
        self._capture_after = rows[-1]["capture_id"]
        # Image chunk messages first, in chunks (all acked; a crash between leaves a capture still prunable),
        # then each capture row with its own message, in one transaction.
        chunk_seqs = [
            row["seq"]
            for capture in rows
            for row in self.store.query(
                "SELECT seq FROM outbox WHERE record_ref = ? AND seq != ?",
                [f"capture:{capture['capture_id']}", capture["seq"]],
            )
        ]
        for start in range(0, len(chunk_seqs), self.chunk):
            with self.store.transaction(durable=False) as db:
                self._delete_messages(db, chunk_seqs[start : start + self.chunk])
        ids = [r["capture_id"] for r in rows]
        with self.store.transaction(durable=False) as db:
            db.execute(f"DELETE FROM captures WHERE capture_id IN ({_marks(ids)})", ids)
            self._delete_messages(db, [r["seq"] for r in rows])
        self.result.captures += len(ids)
        # The rows are gone (committed); now the files nobody needs any more.
        for row in {r["sha256"]: r for r in rows}.values():
            self._delete_image(row["sha256"], row["image_path"])
        return len(rows) == self.chunk

    def _delete_image(self, sha256: str, stored_path: str) -> None:
        if _image_in_use(self.store, sha256):
            return
        path = _image_path(self.store, stored_path)
        if path is None:
            return
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            self.result.missing_files.append(sha256)
            return
        except OSError as exc:
            raise StoreError(f"pruning image {sha256[:12]}: {exc.strerror}") from exc
        self.result.image_files += 1
        self.result.image_bytes += size

    def _event_messages(self) -> bool:
        seqs = [r["seq"] for r in self.store.query(_EVENT_MESSAGES, [self.cutoff, self.chunk])]
        if seqs:
            with self.store.transaction(durable=False) as db:
                self._delete_messages(db, seqs)
        return len(seqs) == self.chunk

    def _bodies(self) -> bool:
        if self._body_after is None:
            return False
        dropped, self._body_after = drop_acked_bodies(self.store, after_seq=self._body_after, limit=self.chunk)
        self.result.bodies += dropped
        return self._body_after is not None

    def _events(self) -> bool:
        with self.store.transaction(durable=False) as db:
            deleted = db.execute(
                # rowid order is time order: the old ones come first
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? ORDER BY id LIMIT ?)",
                [self.cutoff, self.chunk],
            ).rowcount
        self.result.events += deleted
        return deleted == self.chunk

    def _sessions(self) -> bool:
        ids = [r["session_id"] for r in self.store.query(_SESSIONS, [self._session_after, self.cutoff, self.chunk])]
        if not ids:
            return False
        self._session_after = ids[-1]
        with self.store.transaction(durable=False) as db:
            db.execute(f"DELETE FROM sessions WHERE session_id IN ({_marks(ids)})", ids)
        self.result.sessions += len(ids)
        return len(ids) == self.chunk


def prune(store: Store, retention_days: int, *, now: datetime | None = None, chunk: int = CHUNK) -> PruneResult:
    """Remove confirmed data older than ``retention_days`` and acked bodies, in passes until done (see the
    module docstring for the rules)."""
    return Pruner(store, retention_days, now=now, chunk=chunk).run()
