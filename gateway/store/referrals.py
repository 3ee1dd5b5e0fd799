"""Referral decisions the platform sent down (``cmd/referral``), kept for the desk pages.

A referral is stored once per ``referral_id``: the platform may send the same decision again (QoS 1,
re-sends), and that adds nothing. Rows carry patient data: only the pages behind a login read them.
A decision whose patient id disagrees with its photo's patient, or that names a patient this clinic never saw,
is held for review (``held_reason``). Who acknowledged a decision, and when, comes from the audit trail (the
acknowledgement's own record: ``seen_by``), so that no column repeats it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.records import Eye, Field, Referral, ReferralHold
from gateway.store.db import Store, iso


@dataclass(frozen=True, slots=True)
class AddedReferral:
    """A referral stored for the first time; ``held`` says why it is held for review (None: shown)."""

    held: ReferralHold | None = None


def add_referral(store: Store, referral: Referral) -> AddedReferral | None:
    """Store a referral decision; None when this ``referral_id`` was already stored (idempotent).

    A decision that names a photo this gateway took of one patient together with another patient's id is
    stored but held for review (:attr:`ReferralHold.PATIENT_MISMATCH`): it is shown as neither patient's
    until someone at the desk has checked it with the hospital. So is one for a patient this gateway never
    saw, about no photo taken here (:attr:`ReferralHold.UNKNOWN_PATIENT`): it is not accepted silently.
    """
    with store.transaction(durable=True) as db:
        held: ReferralHold | None = None
        photo_patient: str | None = None
        photo_known = False
        if referral.capture_id is not None:
            row = db.execute("SELECT patient_id FROM captures WHERE capture_id = ?", [referral.capture_id]).fetchone()
            photo_known, photo_patient = row is not None, None if row is None else row[0]
        if photo_patient is not None and referral.patient_id is not None and photo_patient != referral.patient_id:
            held = ReferralHold.PATIENT_MISMATCH
        elif not photo_known and (referral.patient_id is None or not _patient_seen(db, referral.patient_id)):
            held = ReferralHold.UNKNOWN_PATIENT
        cur = db.execute(
            "INSERT OR IGNORE INTO referrals (referral_id, capture_id, patient_id, decision, note, grader, "
            "decided_at, received_at, held_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                referral.referral_id,
                referral.capture_id,
                referral.patient_id,
                referral.decision,
                referral.note,
                referral.grader,
                None if referral.decided_at is None else iso(referral.decided_at),
                iso(store.clock.utc_now()),
                None if held is None else str(held),
            ],
        )
        return AddedReferral(held) if cur.rowcount else None


def _patient_seen(db: Any, patient_id: str) -> bool:
    """Whether this gateway ever had anything of ``patient_id``: a desk session, a photo, a meter link or a
    reading (the small tables first; referrals are rare, so the readings' scan is affordable)."""
    query = (
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE patient_id = :p) OR EXISTS (SELECT 1 FROM captures "
        "WHERE patient_id = :p) OR EXISTS (SELECT 1 FROM meter_patients WHERE patient_id = :p) "
        "OR EXISTS (SELECT 1 FROM readings WHERE patient_id = :p)"
    )
    return bool(db.execute(query, {"p": patient_id}).fetchone()[0])


_INBOX_COLUMNS = (
    # A held decision belongs to no patient until checked: its patient_id is NULL here, and the two ids that
    # disagree come as named_patient_id (the decision's) and capture_patient_id (the photo's).
    "r.referral_id, r.capture_id, "
    "CASE WHEN r.held_reason IS NULL THEN COALESCE(r.patient_id, c.patient_id) END AS patient_id, "
    "r.decision, r.note, r.grader, r.decided_at, r.received_at, r.seen_at, r.held_reason, "
    "r.patient_id AS named_patient_id, c.patient_id AS capture_patient_id, c.eye, c.field, c.captured_at"
)
"""A referral with what the desk needs of its capture: a decision sent for a capture only names the
capture, and the patient and eye come from the capture row when this gateway took it."""

_SELECT_WITH_CAPTURE = f"SELECT {_INBOX_COLUMNS} FROM referrals r LEFT JOIN captures c ON c.capture_id = r.capture_id "


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferralRow:
    """A stored referral decision as the desk shows it: the decision as received, what the desk needs of its
    photo when this gateway took it, and who acknowledged it (patient data: only pages behind a login read it).
    Timestamps are the stored ISO 8601 text."""

    referral_id: str
    capture_id: str | None
    patient_id: str | None
    """Whose decision it is: the one it names, else its photo's patient; None while it is held for review."""
    decision: str
    """As the platform sent it (the contract's codes; a new one shows as received)."""
    note: str | None
    grader: str | None
    decided_at: str | None
    received_at: str
    seen_at: str | None
    """When the desk acknowledged it (None: not yet)."""
    held_reason: ReferralHold | None
    named_patient_id: str | None
    """The patient id the decision itself names (None when it names only a photo)."""
    capture_patient_id: str | None
    """The patient of its photo (None when this gateway did not take the photo)."""
    eye: Eye | None
    field: Field | None
    captured_at: str | None
    """Of its photo, when this gateway took it."""
    seen_by: str | None
    """Who acknowledged it, from the acknowledgement's audit record (None while unseen)."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, seen_by: str | None) -> ReferralRow:
        """The record of one row selected with :data:`_INBOX_COLUMNS`, with who acknowledged it."""
        return cls(
            referral_id=row["referral_id"],
            capture_id=row["capture_id"],
            patient_id=row["patient_id"],
            decision=row["decision"],
            note=row["note"],
            grader=row["grader"],
            decided_at=row["decided_at"],
            received_at=row["received_at"],
            seen_at=row["seen_at"],
            held_reason=None if row["held_reason"] is None else ReferralHold(row["held_reason"]),
            named_patient_id=row["named_patient_id"],
            capture_patient_id=row["capture_patient_id"],
            eye=None if row["eye"] is None else Eye(row["eye"]),
            field=None if row["field"] is None else Field(row["field"]),
            captured_at=row["captured_at"],
            seen_by=seen_by,
        )


def _with_seen_by(store: Store, rows: list[dict[str, Any]]) -> list[ReferralRow]:
    """``rows`` as records with ``seen_by``: who acknowledged each seen one, from the acknowledgement's audit
    record (written in the transaction that set ``seen_at``). One pass over the audit trail for the whole page."""
    seen = [r["referral_id"] for r in rows if r["seen_at"] is not None]
    by: dict[str, str] = {}
    for start in range(0, len(seen), 500):  # SQLite's bound-parameter limit
        chunk = seen[start : start + 500]
        for row in store.query(
            "SELECT target_id, actor FROM audit WHERE action = 'referral_acknowledged' AND target_kind = 'referral' "
            f"AND target_id IN ({', '.join('?' * len(chunk))}) ORDER BY id",
            chunk,
        ):
            by[row["target_id"]] = row["actor"]
    return [ReferralRow.from_row(r, seen_by=by.get(r["referral_id"])) for r in rows]


def list_referrals(
    store: Store,
    *,
    patient_id: str | None = None,
    capture_id: str | None = None,
    unseen_only: bool = False,
    limit: int = 50,
) -> list[ReferralRow]:
    """Referrals, newest first (arrival order), optionally for one patient or capture, or only unseen ones.

    A decision that names only a capture belongs to that capture's patient (when this gateway took it); one
    held for review belongs to no patient.
    """
    return _with_seen_by(
        store,
        store.query(
            _SELECT_WITH_CAPTURE
            + "WHERE (? IS NULL OR (r.held_reason IS NULL AND COALESCE(r.patient_id, c.patient_id) = ?)) "
            "AND (? IS NULL OR r.capture_id = ?) "
            "AND (? = 0 OR r.seen_at IS NULL) ORDER BY r.rowid DESC LIMIT ?",
            [patient_id, patient_id, capture_id, capture_id, int(unseen_only), limit],
        ),
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


def get_referral(store: Store, referral_id: str) -> ReferralRow | None:
    """One referral with its capture's patient, eye and field (None when unknown)."""
    rows = store.query(
        _SELECT_WITH_CAPTURE + "WHERE r.referral_id = ?",
        [referral_id],
    )
    return _with_seen_by(store, rows)[0] if rows else None


def inbox(store: Store, *, recent: int = 100, cap: int = 1000) -> list[ReferralRow]:
    """The desk's referral inbox, newest arrival first: every unseen referral plus the ``recent`` newest.

    Unseen ones are never pushed off the list by newer seen ones; ``cap`` only bounds the page if
    nobody acknowledges anything for a very long time.
    """
    return _with_seen_by(
        store,
        store.query(
            _SELECT_WITH_CAPTURE
            + "WHERE r.seen_at IS NULL OR r.rowid IN (SELECT rowid FROM referrals ORDER BY rowid DESC LIMIT ?) "
            "ORDER BY r.rowid DESC LIMIT ?",
            [recent, cap],
        ),
    )
