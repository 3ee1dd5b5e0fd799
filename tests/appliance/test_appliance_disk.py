"""Disk policy: low-disk events, intake stops before the disk is full, a full database loses nothing stored.

Free space is real throughout: thresholds are set relative to what the test's file system has free, so no
free-space probe is faked. A small real file system (tmpfs in a private mount namespace) is used where the
kernel lets an unprivileged user namespace mount one; otherwise that test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import threading
from pathlib import Path

import pytest
from support.factories import T0, make_store, reading
from support.small_fs import run_on_small_fs

from gateway.clock import FakeClock
from gateway.errors import DiskFull, IntakeRefused
from gateway.health import MB, HealthMonitor, disk_state
from gateway.store import Store
from gateway.store.readings import add_readings, count_readings


def free_mb(store: Store) -> int:
    return store.free_bytes() // MB


def kinds(store: Store) -> list[str]:
    return [r["kind"] for r in store.query("SELECT kind FROM events ORDER BY id")]


def test_disk_state_thresholds_and_hysteresis() -> None:
    assert disk_state(2000 * MB, warn_mb=1000, floor_mb=200) == "ok"
    assert disk_state(999 * MB, warn_mb=1000, floor_mb=200) == "low"
    assert disk_state(199 * MB, warn_mb=1000, floor_mb=200) == "full"
    # Leaving a state needs a margin (5 %, at least 8 MB) above its threshold.
    assert disk_state(1001 * MB, warn_mb=1000, floor_mb=200, previous="low") == "low"
    assert disk_state(1060 * MB, warn_mb=1000, floor_mb=200, previous="low") == "ok"
    assert disk_state(201 * MB, warn_mb=1000, floor_mb=200, previous="full") == "full"
    assert disk_state(300 * MB, warn_mb=1000, floor_mb=200, previous="full") == "low"
    # Zero thresholds switch the checks off.
    assert disk_state(0, warn_mb=0, floor_mb=0) == "ok"


def test_disk_events_follow_real_free_space(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock=clock)
    mon = HealthMonitor(store, clock, low_disk_warn_mb=max(1, free_mb(store) // 4), min_free_mb=0, interval_s=1)
    asyncio.run(mon.check())
    assert kinds(store) == []  # plenty of space: nothing to say
    mon.low_disk_warn_mb = free_mb(store) + 500
    asyncio.run(mon.check())
    asyncio.run(mon.check())
    assert kinds(store) == ["disk_low"]
    mon.min_free_mb = free_mb(store) + 400
    asyncio.run(mon.check())
    assert kinds(store) == ["disk_low", "disk_full"]
    snap = mon.snapshot()["disk"]
    assert snap["state"] == "full" and snap["free_mb"] is not None
    mon.min_free_mb = 0
    mon.low_disk_warn_mb = max(1, free_mb(store) // 4)
    asyncio.run(mon.check())
    assert kinds(store) == ["disk_low", "disk_full", "disk_ok"]
    detail = store.query("SELECT detail FROM events WHERE kind = 'disk_full'")[0]["detail"]
    assert '"free_mb"' in detail and '"floor_mb"' in detail


def test_intake_refused_below_the_floor_stores_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert add_readings(store, [reading(1)]).added == 1
    store.min_free_mb = free_mb(store) + 100  # the real file system now has "too little" free space
    with pytest.raises(IntakeRefused):
        add_readings(store, [reading(2), reading(3)])
    assert count_readings(store) == 1
    assert store.scalar("SELECT count(*) FROM outbox") == 1
    store.min_free_mb = 1
    assert add_readings(store, [reading(2)]).added == 1


def test_full_database_rolls_back_and_keeps_what_was_stored(tmp_path: Path) -> None:
    """SQLite's max_page_count makes the database file hit a real SQLITE_FULL."""
    store = make_store(tmp_path)
    pages = int(store.scalar("PRAGMA page_count"))
    store = make_store(tmp_path, max_page_count=pages + 12)  # the schema plus a few pages of data
    seq, stored = 0, 0
    with pytest.raises(DiskFull):
        for _ in range(1000):
            batch = [reading(seq + i) for i in range(1, 21)]
            stored += add_readings(store, batch).added
            seq += 20
    # The failing batch left nothing half-written: every stored reading has its outbox message.
    assert count_readings(store) == stored > 0
    assert store.scalar("SELECT count(*) FROM outbox") == stored
    assert store.scalar("PRAGMA integrity_check") == "ok"


def test_unwritable_state_directory_is_reported(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock=clock)
    mon = HealthMonitor(store, clock, low_disk_warn_mb=0, min_free_mb=0, interval_s=1)
    mon.probe_path.mkdir()  # open(O_WRONLY) now fails (EISDIR), as it would on a card gone read-only (EROFS)
    obs = asyncio.run(mon.check())
    assert not obs.writable and "not writable" in (obs.error or "")
    assert mon.snapshot()["store_writable"] is False
    mon.probe_path.rmdir()
    asyncio.run(mon.check())
    assert kinds(store) == ["store_unwritable", "store_writable"]


def test_a_probe_that_hangs_makes_the_monitor_unhealthy(tmp_path: Path) -> None:
    """A FIFO at the probe path blocks open() for writing: a stand-in for I/O on a failing SD card."""
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock=clock)
    mon = HealthMonitor(store, clock, low_disk_warn_mb=0, min_free_mb=0, interval_s=1)
    os.mkfifo(mon.probe_path)

    async def scenario() -> tuple[bool, bool, bool]:
        task = asyncio.create_task(mon.check())
        await asyncio.sleep(0.2)
        blocked = not task.done()
        clock.advance(5)  # three intervals without a completed probe
        unhealthy = not mon.healthy()
        # Release the probe by opening the FIFO's other end; the monitor recovers.
        reader = await asyncio.to_thread(os.open, mon.probe_path, os.O_RDONLY | os.O_NONBLOCK)
        await asyncio.wait_for(task, 5)
        os.close(reader)
        return blocked, unhealthy, mon.healthy()

    assert asyncio.run(scenario()) == (True, True, True)


def test_probe_thread_does_not_block_exit(tmp_path: Path) -> None:
    """The probe runs in a daemon thread of its own: a hung probe cannot hold up the daemon's shutdown."""
    clock = FakeClock(T0)
    store = make_store(tmp_path, clock=clock)
    mon = HealthMonitor(store, clock, low_disk_warn_mb=0, min_free_mb=0, interval_s=1)
    os.mkfifo(mon.probe_path)

    async def scenario() -> None:
        task = asyncio.create_task(mon.check())
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(scenario())  # returns although the probe thread is still blocked in open()
    assert any(t.name == "health-probe" and t.daemon for t in threading.enumerate())
    fd = os.open(mon.probe_path, os.O_RDONLY | os.O_NONBLOCK)  # let the thread finish
    os.close(fd)


SMALL_FS_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from support.factories import make_store, reading
    from gateway.errors import DiskFull, IntakeRefused
    from gateway.store.readings import add_readings, count_readings

    root = Path(sys.argv[1])
    store = make_store(root, min_free_mb=1)
    seq = stored = 0
    try:
        while True:
            stored += add_readings(store, [reading(seq + i, patient_id="P" * 200) for i in range(1, 51)]).added
            seq += 50
    except IntakeRefused:
        outcome = "refused"
    except DiskFull:
        outcome = "full"
    assert count_readings(store) == stored > 0
    assert store.scalar("SELECT count(*) FROM outbox") == stored
    assert store.scalar("PRAGMA integrity_check") == "ok"
    print(outcome, stored, store.free_bytes() // 1024)
    """
)


def test_intake_stops_before_a_small_real_file_system_is_full(tmp_path: Path) -> None:
    proc = run_on_small_fs(SMALL_FS_SCRIPT, tmp_path, size_mb=6)
    assert proc.returncode == 0, proc.stderr
    outcome, stored, free_kb = proc.stdout.split()
    print(f"small fs: {outcome} after {stored} readings with {free_kb} KiB free")
    assert outcome == "refused"  # the floor stopped intake before SQLite hit ENOSPC
    assert int(free_kb) > 0
