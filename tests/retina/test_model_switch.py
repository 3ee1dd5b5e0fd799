"""The daemon's retina component picks up an installed model without a restart and loses no capture in flight.

Real parts: the ``retina`` component's own ``run()`` loop (its model watcher), real onnxruntime sessions on tiny
models installed with :class:`ModelStore` under the runtime's state directory, a real store and outbox.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from support.factories import T0
from support.model_artifacts import SIZE, publish
from support.retina import fundus_jpeg, retina_config

from gateway.clock import FakeClock
from gateway.records import Eye, Field
from gateway.retina.intake import CaptureMeta, IntakeResult
from gateway.retina.model_store import Candidate, ModelStore, model_root
from gateway.retina.service import RetinaService
from gateway.runtime import Runtime
from gateway.store import open_store
from gateway.store.db import Origin

DEADLINE_S = 30.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


async def async_wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def in_inference(thread: threading.Thread) -> bool:
    """The thread is inside TriageModel.probability (waiting for the session it started with)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "probability":
            return True
        frame = frame.f_back
    return False


def test_installed_model_is_picked_up_between_captures(tmp_path: Path) -> None:
    config = retina_config(tmp_path, model={"watch_interval_s": 0.05})
    clock = FakeClock(T0)
    store = open_store(config.db_path, config.image_dir, clock=clock, origin=Origin("chc-test", "gw-test"))
    runtime = Runtime(config=config, store=store, clock=clock)
    models = ModelStore(model_root(config.gateway.state_dir))
    models.install(Candidate.beside(publish(tmp_path / "pub", "model-a", size=SIZE)))
    service = RetinaService(runtime)
    old = service.model
    assert old is not None and old.model_version == "model-a"
    snapshot = service.snapshot()["model"]
    assert snapshot["installed_at"] is not None and snapshot["validation_text"].startswith("AUC 0.900 (0.800-0.990)")

    # A capture in flight: decoded and gated, then held inside the old model's session.
    results: list[IntakeResult] = []
    meta = CaptureMeta(eye=Eye.RIGHT, field=Field.MACULA, source="upload", patient_id="P-1")
    old._lock.acquire()
    in_flight = threading.Thread(target=lambda: results.append(service.intake.take(fundus_jpeg(seed=61), meta)))
    in_flight.start()
    try:
        wait_for(lambda: in_inference(in_flight), "the first capture to reach the model")
        models.install(Candidate.beside(publish(tmp_path / "pub", "model-b", size=SIZE)))

        async def daemon_until_switched() -> None:
            task = asyncio.create_task(service.run())
            await async_wait_for(lambda: service.model is not old, "the component to switch models")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(daemon_until_switched())
        assert in_flight.is_alive(), "the switch did not wait for, or disturb, the capture in flight"
    finally:
        old._lock.release()
    in_flight.join(DEADLINE_S)
    assert service.model is not None and service.model.model_version == "model-b"
    second = service.intake.take(fundus_jpeg(seed=62), meta)

    (first,) = results
    assert first.capture.triage is not None and first.capture.triage.model_version == "model-a"
    assert second.capture.triage is not None and second.capture.triage.model_version == "model-b"
    rows = runtime.store.query(
        "SELECT b.payload FROM outbox o JOIN outbox_bodies b ON b.seq = o.seq WHERE o.kind = 'capture' ORDER BY o.seq"
    )
    versions = [json.loads(r["payload"])["triage"]["model_version"] for r in rows]
    assert versions == ["model-a", "model-b"]  # both captures stored and queued, each naming its model
    assert service.snapshot()["model"]["model_version"] == "model-b"
