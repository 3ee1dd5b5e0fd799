"""Referral decisions the platform sent down (``cmd/referral``), kept for the desk pages.

A referral is stored once per ``referral_id``: the platform may send the same decision again (QoS 1,
re-sends), and that adds nothing. Rows carry patient data: only the pages behind a login read them.
"""

from __future__ import annotations

from typing import Any

from gateway.records import Referral
from gateway.store.db import Store, iso


def add_referral(store: Store, referral: Referral) -> bool:
    """Store a referral decision; False when this ``referral_id`` was already stored (idempotent)."""
    with store.transaction(durable=True) as db:
        cur = db.execute(
            "INSERT OR IGNORE INTO referrals (referral_id, capture_id, patient_id, decision, note, grader, "
            "decided_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                referral.referral_id,
                referral.capture_id,
                referral.patient_id,
                referral.decision,
                referral.note,
                referral.grader,
                None if referral.decided_at is None else iso(referral.decided_at),
                iso(store.clock.utc_now()),
            ],
        )
        return bool(cur.rowcount)


_INBOX_COLUMNS = (
    "r.referral_id, r.capture_id, COALESCE(r.patient_id, c.patient_id) AS patient_id, r.decision, r.note, "
    "r.grader, r.decided_at, r.received_at, r.seen_at, c.eye, c.field, c.captured_at"
)
"""A referral with what the desk needs of its capture: a decision sent for a capture only names the
capture, and the patient and eye come from the capture row when this gateway took it."""

_SELECT_WITH_CAPTURE = f"SELECT {_INBOX_COLUMNS} FROM referrals r LEFT JOIN captures c ON c.capture_id = r.capture_id "


def list_referrals(
    store: Store,
    *,
    patient_id: str | None = None,
    capture_id: str | None = None,
    unseen_only: bool = False,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Referrals, newest first (arrival order), optionally for one patient or capture, or only unseen ones.

    A decision that names only a capture belongs to that capture's patient (when this gateway took it).
    """
    return store.query(
        _SELECT_WITH_CAPTURE
        + "WHERE (? IS NULL OR COALESCE(r.patient_id, c.patient_id) = ?) AND (? IS NULL OR r.capture_id = ?) "
        "AND (? = 0 OR r.seen_at IS NULL) ORDER BY r.rowid DESC LIMIT ?",
        [patient_id, patient_id, capture_id, capture_id, int(unseen_only), limit],
    )


def mark_seen(store: Store, referral_id: str) -> bool:
    """Note that the desk has shown this referral; False when unknown or already seen."""
    with store.transaction(durable=False) as db:
        cur = db.execute(
            "UPDATE referrals SET seen_at = ? WHERE referral_id = ? AND seen_at IS NULL",
            [iso(store.clock.utc_now()), referral_id],
        )
        return bool(cur.rowcount)


def count_unseen(store: Store) -> int:
    """Referrals not yet shown at the desk."""
    return int(store.scalar("SELECT count(*) FROM referrals WHERE seen_at IS NULL"))


def get_referral(store: Store, referral_id: str) -> dict[str, Any] | None:
    """One referral with its capture's patient, eye and field (None when unknown)."""
    rows = store.query(
        _SELECT_WITH_CAPTURE + "WHERE r.referral_id = ?",
        [referral_id],
    )
    return rows[0] if rows else None


def inbox(store: Store, *, recent: int = 100, cap: int = 1000) -> list[dict[str, Any]]:
    """The desk's referral inbox, newest arrival first: every unseen referral plus the ``recent`` newest.

    Unseen ones are never pushed off the list by newer seen ones; ``cap`` only bounds the page if
    nobody acknowledges anything for a very long time.
    """
    return store.query(
        _SELECT_WITH_CAPTURE
        + "WHERE r.seen_at IS NULL OR r.rowid IN (SELECT rowid FROM referrals ORDER BY rowid DESC LIMIT ?) "
        "ORDER BY r.rowid DESC LIMIT ?",
        [recent, cap],
    )
