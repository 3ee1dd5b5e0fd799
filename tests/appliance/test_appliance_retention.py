"""Retention prunes only what the platform confirmed, after the retention period; images only when unused."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from support.factories import T0, confirm, make_store, reading, store_capture

from gateway.clock import FakeClock
from gateway.retention import RetentionTask
from gateway.store import Store
from gateway.store.events import add_event
from gateway.store.outbox import Outbox, enqueue
from gateway.store.readings import add_readings
from gateway.store.retention import prune
from gateway.wire.chunks import body_ref

OLD = T0 - timedelta(days=120)
RECENT = T0 - timedelta(days=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(OLD)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Store:
    return make_store(tmp_path, clock=clock)


def add_reading(store: Store, seq: int) -> str:
    added = add_readings(store, [reading(seq)])
    rid = added.reading_ids[0]
    return str(store.scalar("SELECT message_id FROM readings WHERE reading_id = ?", [rid]))


def counts(store: Store) -> dict[str, int]:
    return {t: int(store.scalar(f"SELECT count(*) FROM {t}")) for t in ("readings", "captures", "outbox", "events")}


def test_only_confirmed_old_readings_are_pruned(store: Store, clock: FakeClock) -> None:
    outbox = Outbox(store)
    acked, pending, sent, parked = (add_reading(store, s) for s in (1, 2, 3, 4))
    confirm(store, [acked])
    claimed = outbox.claim_batch(10)  # pending, sent, parked go out (in flight)
    assert {m.message_id for m in claimed} == {pending, sent, parked}
    outbox.requeue([pending])
    outbox.park(parked, "too large")
    clock.now = RECENT
    recent_acked = add_reading(store, 5)
    confirm(store, [recent_acked])
    clock.now = T0

    result = prune(store, retention_days=90)

    assert result.readings == 1
    kept = {r["message_id"]: r["state"] for r in store.query(
        "SELECT r.message_id, o.state FROM readings r JOIN outbox o USING (message_id)")}  # fmt: skip
    assert kept == {pending: "pending", sent: "pending", parked: "parked", recent_acked: "acked"}  # sent: in flight
    assert outbox.state_of(acked) is None  # its acked outbox row went with it
    assert result.outbox == 1
    # Nothing more to do on a second run.
    again = prune(store, retention_days=90)
    assert (again.readings, again.outbox) == (0, 0)


def test_retention_days_is_honoured(store: Store, clock: FakeClock) -> None:
    message_id = add_reading(store, 1)
    confirm(store, [message_id])
    clock.now = OLD + timedelta(days=30)
    assert prune(store, retention_days=31).readings == 0
    assert prune(store, retention_days=29).readings == 1


def test_capture_waits_for_every_image_chunk(store: Store, clock: FakeClock) -> None:
    capture_id, meta_id, chunk_ids = store_capture(store, b"fundus-bytes-" * 100, chunk_size=1024)
    image = next(store.image_dir.rglob("*.jpg"))
    confirm(store, [meta_id, *chunk_ids[:-1]])  # the last chunk is still unconfirmed
    clock.now = T0
    assert prune(store, 90).captures == 0
    assert image.exists()
    confirm(store, chunk_ids[-1:])
    result = prune(store, 90)
    assert (result.captures, result.image_files, result.image_bytes) == (1, 1, len(b"fundus-bytes-" * 100))
    assert not image.exists()
    assert store.scalar("SELECT count(*) FROM outbox WHERE record_ref = ?", [f"capture:{capture_id}"]) == 0


def test_shared_image_file_stays_while_any_capture_uses_it(store: Store, clock: FakeClock) -> None:
    _, meta1, chunks1 = store_capture(store, b"same-image")
    clock.now = RECENT
    _, meta2, chunks2 = store_capture(store, b"same-image")  # the same photo uploaded again, later
    confirm(store, [meta1, *chunks1, meta2, *chunks2])
    clock.now = T0
    result = prune(store, 90)
    assert (result.captures, result.image_files) == (1, 0)
    assert len(list(store.image_dir.rglob("*.jpg"))) == 1
    clock.now = T0 + timedelta(days=100)
    assert prune(store, 90).image_files == 1
    assert list(store.image_dir.rglob("*.jpg")) == []


def test_image_still_read_by_an_unsent_chunk_is_kept(store: Store, clock: FakeClock) -> None:
    """A second capture of the same photo whose chunks are unsent keeps the file even if its metadata went."""
    _, meta1, chunks1 = store_capture(store, b"photo")
    confirm(store, [meta1, *chunks1])
    sha = hashlib.sha256(b"photo").hexdigest()
    with store.transaction() as db:  # an unconfirmed chunk message that reads the same file
        enqueue(db, kind="image", topic="retina/image/x", created_at=OLD, body_ref=body_ref(sha, 0, 5))
    clock.now = T0
    result = prune(store, 90)
    assert (result.captures, result.image_files) == (1, 0)
    assert len(list(store.image_dir.rglob("*.jpg"))) == 1


def test_events_and_their_confirmed_messages_are_pruned(store: Store, clock: FakeClock) -> None:
    old_event = add_event(store, "device_connected", "meter connected", detail={"meter_id": "m1"})
    unsent_event = add_event(store, "disk_low", "free space is low")
    confirm(store, [old_event])
    clock.now = T0
    add_event(store, "device_connected", "meter connected again")
    result = prune(store, 90)
    assert result.events == 2
    assert [r["kind"] for r in store.query("SELECT kind FROM events")] == ["device_connected"]
    assert Outbox(store).state_of(old_event) is None
    assert Outbox(store).state_of(unsent_event) == "pending"  # unsent: never dropped


def test_image_path_outside_the_image_dir_is_never_deleted(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    outsider = tmp_path / "elsewhere.jpg"
    outsider.write_bytes(b"x")
    capture_id, meta, chunks = store_capture(store, b"x")
    with store.transaction() as db:
        db.execute("UPDATE captures SET image_path = ? WHERE capture_id = ?", [str(outsider), capture_id])
    confirm(store, [meta, *chunks])
    clock.now = T0
    assert prune(store, 90).captures == 1
    assert outsider.exists()


def test_task_skips_on_an_untrusted_clock_unless_the_disk_is_low(store: Store, clock: FakeClock) -> None:
    confirm(store, [add_reading(store, 1)])
    clock.now = T0
    clock.synchronised = False
    task = RetentionTask(store, 90, low_disk_warn_mb=0)
    assert task.run_once().skipped == "clock not synchronised"
    assert counts(store)["readings"] == 1
    # Real free space is below an absurd warning level: the disk counts as low, so it prunes anyway.
    low = RetentionTask(store, 90, low_disk_warn_mb=10**9)
    assert low.disk_low()
    assert low.run_once().readings == 1
    snap = low.snapshot()
    assert snap["last"]["readings"] == 1 and json.dumps(snap)  # JSON-able for the status page


def test_task_runs_as_a_component(store: Store, clock: FakeClock) -> None:
    confirm(store, [add_reading(store, 1)])
    clock.now = T0
    task = RetentionTask(store, 90, interval_s=3600, first_delay_s=0)

    async def scenario() -> None:
        runner = asyncio.create_task(task.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if task.last is not None:
                break
        runner.cancel()

    asyncio.run(scenario())
    assert task.healthy() and task.last is not None and task.last.readings == 1
