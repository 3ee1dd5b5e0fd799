"""Small builders of domain values and stores for tests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.clock import FakeClock
from gateway.records import (
    BloodPressureReading,
    Capture,
    CuffStatus,
    Eye,
    Field,
    GlucoseReading,
    PressureUnit,
    QualityVerdict,
    Unit,
)
from gateway.store import Store, open_store
from gateway.store.captures import add_capture as add_capture_to_store
from gateway.store.db import Origin, new_id

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


MESSAGES = (
    "(SELECT o.*, b.topic, b.payload, b.body_ref, b.properties FROM outbox o "
    "LEFT JOIN outbox_bodies b ON b.seq = o.seq)"
)
"""The outbox's messages with their bodies (a table expression: ``f"SELECT payload FROM {MESSAGES} ..."``)."""


def make_store(tmp_path: Path, clock: FakeClock | None = None, **kwargs: object) -> Store:
    """A real SQLite store in ``tmp_path``."""
    return open_store(
        tmp_path / "gateway.db",
        tmp_path / "images",
        clock=clock or FakeClock(T0),
        origin=Origin("chc-test", "gw-test", "json"),
        **kwargs,  # type: ignore[arg-type]
    )


def reading(
    seq: int | None,
    *,
    meter_id: str = "gls:TEST1",
    value: float = 108.0,
    unit: Unit = Unit.MG_DL,
    patient_id: str | None = "P-0001",
    minutes: int = 0,
) -> GlucoseReading:
    """A plausible reading; ``seq=None`` for meters that do not number records."""
    meter_time = datetime(2026, 11, 1, 7, 30) + timedelta(minutes=minutes + (seq or 0) * 30)
    return GlucoseReading(
        meter_id=meter_id,
        sequence=seq,
        meter_time=meter_time,
        clock_offset_s=12.0,
        corrected_time=(meter_time + timedelta(seconds=12)).replace(tzinfo=UTC),
        time_trusted=True,
        value=value,
        unit=unit,
        patient_id=patient_id,
    )


def bp_reading(
    seq: int | None,
    *,
    meter_id: str = "bps:CUFF1",
    systolic: float = 128.0,
    diastolic: float = 84.0,
    mean_arterial: float | None = 99.0,
    unit: PressureUnit = PressureUnit.MMHG,
    pulse_bpm: float | None = 71.0,
    user_id: int | None = 1,
    status: tuple[CuffStatus, ...] = (),
    patient_id: str | None = "P-0001",
    minutes: int = 0,
    session_id: str | None = None,
) -> BloodPressureReading:
    """A plausible blood pressure reading; ``seq=None`` for cuffs that do not number their records."""
    meter_time = datetime(2026, 11, 1, 7, 30) + timedelta(minutes=minutes + (seq or 0) * 30)
    return BloodPressureReading(
        meter_id=meter_id,
        sequence=seq,
        user_id=user_id,
        meter_time=meter_time,
        clock_offset_s=12.0,
        corrected_time=(meter_time + timedelta(seconds=12)).replace(tzinfo=UTC),
        time_trusted=True,
        systolic=systolic,
        diastolic=diastolic,
        mean_arterial=mean_arterial,
        unit=unit,
        pulse_bpm=pulse_bpm,
        status=status,
        patient_id=patient_id,
        session_id=session_id,
    )


def store_capture(store: Store, image: bytes, *, chunk_size: int = 1024) -> tuple[str, str, list[str]]:
    """A photo stored by the real intake path (file by hash, row, capture message and chunk messages)."""
    sha = hashlib.sha256(image).hexdigest()
    capture = Capture(
        capture_id=new_id(),
        sha256=sha,
        size_bytes=len(image),
        media_type="image/jpeg",
        width=10,
        height=10,
        eye=Eye.RIGHT,
        field=Field.MACULA,
        source=f"upload-{new_id()[:6]}",  # distinct sources: the same bytes again are a new capture
        captured_at=store.clock.utc_now(),
        quality=QualityVerdict(ok=True),
        patient_id="P-1",
    )
    stored = add_capture_to_store(store, capture, image, chunk_size=chunk_size)
    assert stored.message_id is not None and not stored.duplicate
    chunks = [
        r["message_id"]
        for r in store.query(
            "SELECT message_id FROM outbox WHERE kind = 'image_chunk' AND record_ref = ? ORDER BY seq",
            [f"capture:{capture.capture_id}"],
        )
    ]
    return capture.capture_id, stored.message_id, chunks


def confirm(store: Store, message_ids: list[str]) -> int:
    """What must happen before the platform's ack counts: send (claim) every pending message, ack
    ``message_ids``, and requeue the rest. Returns how many the ack confirmed."""
    from gateway.store.outbox import Outbox

    outbox = Outbox(store)
    claimed = [m.message_id for m in outbox.claim_batch(1_000_000)]
    applied = outbox.ack(message_ids).applied
    outbox.requeue([m for m in claimed if m not in set(message_ids)])
    return applied
