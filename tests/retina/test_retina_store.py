"""Captures in the store: image by hash, row + capture message + chunk messages in one transaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.factories import MESSAGES, T0, make_store
from support.retina import build_tiny_model, fundus_jpeg

from gateway.clock import FakeClock
from gateway.errors import CaptureError, IntakeRefused, StoreError
from gateway.records import Eye, Field, TriageDecision
from gateway.retina.intake import CaptureMeta, RetinaIntake
from gateway.retina.triage import TriageModel
from gateway.store import Store
from gateway.store import captures as store_captures
from gateway.store.outbox import Outbox
from gateway.wire import chunks, contract

META = CaptureMeta(eye=Eye.RIGHT, field=Field.MACULA, source="upload", patient_id="P-0042", operator="tech1")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path, FakeClock(T0))


@pytest.fixture
def model(tmp_path: Path) -> TriageModel:
    return TriageModel(build_tiny_model(tmp_path / "tiny.onnx"))


def outbox_rows(store: Store) -> list[dict]:
    return store.query(f"SELECT * FROM {MESSAGES} ORDER BY seq")


def test_capture_is_stored_with_its_messages(store: Store, model: TriageModel) -> None:
    data = fundus_jpeg(seed=5, size=(800, 600))
    result = RetinaIntake(store, model, chunk_size=16 * 1024).take(data, META)
    stored = result.stored
    assert not stored.duplicate
    # Image on disk under its hash, byte for byte.
    assert stored.image_path == store.image_dir / result.capture.sha256[:2] / f"{result.capture.sha256}.jpg"
    assert stored.image_path.read_bytes() == data
    row = store_captures.get_capture(store, stored.capture_id)
    assert row is not None
    assert (row.eye, row.field, row.source, row.patient_id) == ("R", "macula", "upload", "P-0042")
    assert row.quality_ok is True and row.quality_reasons == ()
    assert row.decision in ("refer", "rescreen") and row.model_version == "tiny-test-1"
    assert row.thresholds == {"refer": 0.5, "high_specificity": 0.8}
    rows = outbox_rows(store)
    expected_chunks = -(-len(data) // (16 * 1024))
    assert stored.chunks == expected_chunks and len(rows) == 1 + expected_chunks
    capture_row, chunk_rows = rows[0], rows[1:]
    assert capture_row["kind"] == "capture" and capture_row["topic"] == contract.TOPIC_CAPTURE
    doc = json.loads(capture_row["payload"])
    contract.validate(contract.SCHEMA_CAPTURE, doc)
    assert doc["message_id"] == capture_row["message_id"] == stored.message_id
    assert doc["image"] == {
        "sha256": result.capture.sha256,
        "size_bytes": len(data),
        "media_type": "image/jpeg",
        "width": 800,
        "height": 600,
        "chunk_size": 16 * 1024,
        "chunks": expected_chunks,
    }
    assert doc["triage"]["advisory"] is True
    assert doc["triage"]["thresholds"] == {"refer": 0.5, "high_specificity": 0.8}
    # Chunk rows: no bytes in SQLite, a body_ref each, user properties, the image topic.
    body = b""
    for i, r in enumerate(chunk_rows):
        assert r["kind"] == "image_chunk" and r["payload"] is None
        assert r["topic"] == f"retina/image/{stored.capture_id}"
        props = json.loads(r["properties"])
        assert props == {"capture_id": stored.capture_id, "index": str(i), "total": str(expected_chunks),
                         "sha256": result.capture.sha256}  # fmt: skip
        body += store_captures.read_body(store, r["body_ref"])
    assert body == data


def test_same_bytes_again_is_a_duplicate_that_queues_nothing(store: Store, model: TriageModel) -> None:
    intake = RetinaIntake(store, model)
    data = fundus_jpeg(seed=6)
    first = intake.take(data, META)
    before = len(outbox_rows(store))
    again = intake.take(data, META)
    assert again.stored.duplicate and again.stored.capture_id == first.stored.capture_id
    assert len(outbox_rows(store)) == before
    assert store_captures.count_captures(store) == 1
    # The same photo for the other eye is another capture (the technician corrected the eye), same file.
    other = intake.take(data, CaptureMeta(eye=Eye.LEFT, field=Field.MACULA, source="upload", patient_id="P-0042"))
    assert not other.stored.duplicate and other.stored.image_path == first.stored.image_path
    assert store_captures.count_captures(store) == 2


def test_failed_quality_is_stored_as_ungradable(store: Store, model: TriageModel) -> None:
    import cv2
    import numpy as np

    _, buf = cv2.imencode(".jpg", np.full((480, 640, 3), (40, 200, 40), np.uint8))  # a green card
    result = RetinaIntake(store, model).take(buf.tobytes(), META)
    row = store_captures.get_capture(store, result.stored.capture_id)
    assert row is not None and row.quality_ok is False and row.quality_reasons == ("not_fundus",)
    assert row.decision == TriageDecision.UNGRADABLE and row.referable_probability is None


def test_a_capture_row_comes_typed(store: Store, model: TriageModel) -> None:
    """The row's fixed-set columns come as their enums and its JSON columns decoded; a listing gives the same record."""
    result = RetinaIntake(store, model, chunk_size=16 * 1024).take(fundus_jpeg(seed=7, size=(800, 600)), META)
    row = store_captures.get_capture(store, result.stored.capture_id)
    assert row is not None and (row.eye, row.field) == (Eye.RIGHT, Field.MACULA)
    assert type(row.eye) is Eye and type(row.field) is Field and type(row.decision) is TriageDecision
    assert type(row.quality_ok) is bool and type(row.quality_reasons) is tuple
    assert set(row.quality_metrics) and all(isinstance(v, float) for v in row.quality_metrics.values())
    assert store_captures.list_captures(store) == [row]


def test_bad_image_stores_nothing(store: Store, model: TriageModel) -> None:
    with pytest.raises(CaptureError):
        RetinaIntake(store, model).take(fundus_jpeg()[:5000], META)
    assert store_captures.count_captures(store) == 0 and outbox_rows(store) == []
    assert list(store.image_dir.rglob("*.jpg")) == []


def test_capture_row_and_messages_are_one_transaction(
    store: Store, model: TriageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = store_captures.enqueue

    def failing_enqueue(*args: object, **kwargs: object) -> str:
        calls["n"] += 1
        if calls["n"] == 3:  # the capture message and one chunk went in; the second chunk fails
            raise StoreError("disk error while queueing")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_captures, "enqueue", failing_enqueue)
    with pytest.raises(StoreError):
        RetinaIntake(store, model, chunk_size=4096).take(fundus_jpeg(seed=7), META)
    assert store_captures.count_captures(store) == 0 and outbox_rows(store) == []
    monkeypatch.setattr(store_captures, "enqueue", real)
    # The file written before the transaction is reused by the retry: nothing lost, nothing doubled.
    result = RetinaIntake(store, model, chunk_size=4096).take(fundus_jpeg(seed=7), META)
    assert store_captures.count_captures(store) == 1 and not result.stored.duplicate


def test_intake_refused_when_disk_is_low(tmp_path: Path, model: TriageModel) -> None:
    store = make_store(tmp_path, FakeClock(T0), min_free_mb=10**9)
    with pytest.raises(IntakeRefused):
        RetinaIntake(store, model).take(fundus_jpeg(), META)
    assert store_captures.count_captures(store) == 0


def test_chunks_resume_at_the_first_unacknowledged(store: Store, model: TriageModel) -> None:
    data = fundus_jpeg(seed=8, size=(1024, 768))
    result = RetinaIntake(store, model, chunk_size=8192).take(data, META)
    outbox = Outbox(store)
    first = outbox.claim_batch(4)  # capture message + chunks 0..2 go out
    outbox.ack([m.message_id for m in first])
    lost = outbox.claim_batch(3)  # chunks 3..5 sent, then the broker went away: never acknowledged
    assert outbox.requeue_in_flight() == 3  # restart / ack timeout
    again = outbox.claim_batch(1000)
    assert [m.message_id for m in again[:3]] == [m.message_id for m in lost]
    indexes = [int(m.properties["index"]) for m in again]
    assert indexes == list(range(3, result.stored.chunks))
    received = {
        int(m.properties["index"]): store_captures.read_body(store, m.body_ref or "") for m in first[1:] + again
    }
    assert b"".join(received[i] for i in range(result.stored.chunks)) == data


def test_read_body_errors_are_store_errors(store: Store, model: TriageModel) -> None:
    result = RetinaIntake(store, model).take(fundus_jpeg(seed=9), META)
    sha = result.capture.sha256
    with pytest.raises(StoreError, match="not an image body reference"):
        store_captures.read_body(store, "nonsense")
    with pytest.raises(StoreError, match="not in the store"):
        store_captures.read_body(store, chunks.body_ref("f" * 64, 0, 10))
    with pytest.raises(StoreError, match="shorter"):
        store_captures.read_body(store, chunks.body_ref(sha, result.capture.size_bytes - 5, 10))
    result.stored.image_path.unlink()
    with pytest.raises(StoreError, match="missing"):
        store_captures.read_body(store, chunks.body_ref(sha, 0, 10))
