"""Retinal images through the real forwarder and reference receiver: capture metadata plus chunk rows whose
bytes are read at send time (``body_ref``), sent with their MQTT 5 user properties, reassembled and
hash-checked at the platform, across a broker outage in the middle of the image."""

from __future__ import annotations

import hashlib

import pytest
from support.broker import ForwarderRunner, gateway_config, wait_until
from support.factories import make_store
from support.retina import build_tiny_model, fundus_jpeg

from gateway.clock import SystemClock
from gateway.records import Eye, Field
from gateway.store.outbox import Outbox


@pytest.fixture
def captured(tmp_path):
    from gateway.retina.intake import CaptureMeta, RetinaIntake
    from gateway.retina.triage import TriageModel

    store = make_store(tmp_path / "gw", SystemClock("assume_synced"))
    data = fundus_jpeg(seed=5, size=(1280, 960))
    intake = RetinaIntake(store, TriageModel(build_tiny_model(tmp_path / "m.onnx")), chunk_size=4 * 1024)
    result = intake.take(data, CaptureMeta(eye=Eye.LEFT, field=Field.DISC, source="upload", patient_id="P-9"))
    assert result.stored.chunks >= 10
    return store, result.stored.capture_id, data


def test_image_reassembled_and_verified_across_an_outage(tmp_path, broker, receiver_factory, captured) -> None:
    store, capture_id, data = captured
    receiver = receiver_factory(broker)
    outbox = Outbox(store)
    config = gateway_config(tmp_path / "gw", port=broker.port, inflight_window=3, ack_timeout_s=2)
    with ForwarderRunner(config, store) as run:
        wait_until(lambda: receiver.counts()["messages"] >= 4, what="first chunks at the platform")
        broker.stop()  # outage in the middle of the image
        wait_until(lambda: run.forwarder.state != "online")
        assert receiver.counts()["images"] == 0
        broker.start()
        wait_until(lambda: outbox.stats().total_unsent == 0, timeout_s=30, what="image drained")
    wait_until(lambda: receiver.counts()["images"] == 1)
    (image,) = receiver.store.query("SELECT * FROM images")
    assert image["capture_id"] == capture_id
    assert bytes(image["data"]) == data
    assert image["sha256"] == hashlib.sha256(data).hexdigest()
    assert receiver.counts()["captures"] == 1 and receiver.counts()["invalid"] == 0
    assert receiver.store.query("SELECT count(*) AS n FROM chunks")[0]["n"] == 0  # nothing left half-done


def test_missing_image_file_parks_its_chunks_and_the_rest_drains(tmp_path, broker, receiver_factory, captured):
    store, _capture_id, _data = captured
    for path in (tmp_path / "gw" / "images").rglob("*.jpg"):
        path.unlink()  # the SD card lost the file
    receiver = receiver_factory(broker)
    outbox = Outbox(store)
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=broker.port), store):
        wait_until(lambda: outbox.stats().total_unsent == 0, what="outbox settled")
    stats = outbox.stats()
    assert stats.parked == stats.counts["image_chunk"]["parked"] > 0
    assert all("cannot be read" in p.parked_reason for p in outbox.parked(limit=1000))
    assert receiver.counts()["captures"] == 1  # the metadata message itself went through
