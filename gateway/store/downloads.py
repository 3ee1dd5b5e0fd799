"""One meter download's writes as a unit of work: O(records / batch) transactions, not a dozen per download.

:class:`DownloadWriter` is what :class:`~gateway.meters.session.DownloadSession` writes through:

- :meth:`DownloadWriter.begin`: one transaction, the session row (state ``running``);
- :meth:`DownloadWriter.meter`: one transaction, the meter row (first/last seen, model, firmware) and the
  session's meter and patient;
- :meth:`DownloadWriter.add_batch`: one durable transaction per batch, the readings (and the meter's
  control-solution results, into their own table) with their outbox messages *and* the session's counters
  (new readings, announced total);
- :meth:`DownloadWriter.finish`: one transaction, the meter's last sync or last error, the resume mark of
  a newest-first meter, and the session's end (state, error, counters).

A download of N records in batches of B therefore costs ``3 + ceil(N / B)`` transactions
(``bench/download_transactions.py`` counts them). Reads (the resume cursor, the registered patient) run
outside any transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import ErrorInfo
from gateway.records import BloodPressureReading, ControlResult, GlucoseReading, MeterInfo
from gateway.store.blood_pressure import BLOOD_PRESSURE
from gateway.store.db import Store, iso, new_id
from gateway.store.qc import insert_results
from gateway.store.readings import GLUCOSE, AddResult, insert_records, write_meter

StoredReading = GlucoseReading | ControlResult | BloodPressureReading
"""What a download stores: glucose readings and control-solution results from a meter, blood pressure readings
from a cuff."""


class DownloadWriter:
    """The store side of one meter download. Build it with :meth:`begin`."""

    def __init__(self, store: Store, session_id: str) -> None:
        self.store = store
        self.session_id = session_id
        self.meter_id: str | None = None
        self.total: int | None = None
        """Records the meter announced (None while unknown); written with the next batch and at the end."""
        self.added = 0
        """New patient readings stored (``sessions.records_new``)."""
        self.qc_added = 0
        """New control-solution results stored (``qc_results``, never counted as readings)."""
        self.duplicates = 0

    @classmethod
    def begin(
        cls,
        store: Store,
        *,
        patient_id: str | None = None,
        operator: str | None = None,
        session_id: str | None = None,
    ) -> DownloadWriter:
        """Open the download's session row in state ``running`` (one transaction)."""
        writer = cls(store, session_id or new_id())
        with store.transaction(durable=False) as db:
            db.execute(
                "INSERT INTO sessions (session_id, kind, patient_id, operator, state, started_at) "
                "VALUES (?, 'meter', ?, ?, 'running', ?)",
                [writer.session_id, patient_id, operator, iso(store.clock.utc_now())],
            )
        return writer

    def meter(self, info: MeterInfo, patient_id: str | None) -> None:
        """The meter answered: remember it, and name it and the patient on the session (one transaction)."""
        self.meter_id = info.meter_id
        with self.store.transaction(durable=False) as db:
            write_meter(db, self.store, info)
            db.execute(
                "UPDATE sessions SET meter_id = ?, patient_id = ? WHERE session_id = ?",
                [info.meter_id, patient_id, self.session_id],
            )

    def add_batch(self, records: Sequence[StoredReading]) -> AddResult:
        """Store a batch of readings (glucose or blood pressure) and control-solution results with their outbox
        messages and the session's counters, in ONE durable transaction; the result counts the readings. Raises
        IntakeRefused / DiskFull when the store cannot take them (nothing of the batch is stored then)."""
        if not records:
            return AddResult()
        readings = [r for r in records if isinstance(r, GlucoseReading)]
        controls = [r for r in records if isinstance(r, ControlResult)]
        pressure = [r for r in records if isinstance(r, BloodPressureReading)]
        self.store.check_intake()
        with self.store.transaction(durable=True) as db:
            result = insert_records(db, self.store, readings, GLUCOSE)
            qc = insert_results(db, self.store, controls)
            if pressure:
                more = insert_records(db, self.store, pressure, BLOOD_PRESSURE)
                result.added, result.duplicates = result.added + more.added, result.duplicates + more.duplicates
                result.reading_ids.extend(more.reading_ids)
            db.execute(
                "UPDATE sessions SET records_new = ?, records_total = ? WHERE session_id = ?",
                [self.added + result.added, self.total, self.session_id],
            )
        # Counted only once committed: a refused batch adds nothing.
        self.added += result.added
        self.qc_added += qc.added
        self.duplicates += result.duplicates + qc.duplicates
        return result

    def finish(self, state: str, error: ErrorInfo | None = None, *, resume_identity: str | None = None) -> None:
        """End the download (one transaction): the meter's last sync (or last error), the resume mark of a
        newest-first meter (only for a download that ran to the end), and the session's state and counters.

        ``state`` is ``done``, ``interrupted`` or ``failed``; the stored error is ``"Type: message"`` text (a
        short reason, never patient data).
        """
        now = iso(self.store.clock.utc_now())
        text = None if error is None else str(error)
        with self.store.transaction(durable=False) as db:
            if self.meter_id is not None:
                if error is None:
                    db.execute("UPDATE meters SET last_sync = ?, last_error = NULL WHERE meter_id = ?",
                               [now, self.meter_id])  # fmt: skip
                else:
                    db.execute("UPDATE meters SET last_error = ? WHERE meter_id = ?", [text, self.meter_id])
                if resume_identity is not None:
                    db.execute("UPDATE meters SET resume_identity = ? WHERE meter_id = ?",
                               [resume_identity, self.meter_id])  # fmt: skip
            db.execute(
                "UPDATE sessions SET state = ?, error = ?, ended_at = ?, records_new = ?, records_total = ? "
                "WHERE session_id = ?",
                [state, text, now, self.added, self.total, self.session_id],
            )
