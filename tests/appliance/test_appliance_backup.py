"""gateway export / import: a consistent backup taken while another thread writes, restored on a fresh 'Pi'."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from support.factories import MESSAGES, T0, make_store, reading, store_capture

from gateway.cli import main
from gateway.clock import FakeClock
from gateway.emulate.broker import free_port
from gateway.store import Store
from gateway.store.backup import BackupError, export_backup, import_backup, store_holds_data
from gateway.store.events import add_event
from gateway.store.instance import lock_path
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings

REPO = Path(__file__).resolve().parents[2]


def snapshot(store: Store) -> dict[str, list[tuple[object, ...]]]:
    return {
        "readings": [tuple(r.values()) for r in store.query("SELECT * FROM readings ORDER BY id")],
        "outbox": [
            tuple(r.values())
            for r in store.query(
                f"SELECT seq, message_id, kind, topic, payload, body_ref, state FROM {MESSAGES} ORDER BY seq"
            )
        ],
        "captures": [tuple(r.values()) for r in store.query("SELECT * FROM captures ORDER BY capture_id")],
    }


def test_export_while_writing_then_import_on_a_fresh_pi(tmp_path: Path) -> None:
    src_dir, dst_dir = tmp_path / "old-pi", tmp_path / "new-pi"
    store = make_store(src_dir, clock=FakeClock(T0))
    add_readings(store, [reading(s) for s in range(1, 41)])
    outbox = Outbox(store)
    claimed = outbox.claim_batch(15)  # in flight
    outbox.ack([m.message_id for m in claimed[:5]])  # confirmed
    outbox.park(claimed[-1].message_id, "too large")
    photos = [f"photo {i}".encode() * 500 for i in range(3)]
    for photo in photos:
        store_capture(store, photo)
    shas = [hashlib.sha256(photo).hexdigest() for photo in photos]

    other_messages = store.scalar("SELECT count(*) FROM outbox WHERE kind != 'glucose'")  # captures and chunks
    stop = threading.Event()
    written = 0

    def writer() -> None:  # the daemon keeps taking readings during the backup
        nonlocal written
        seq = 1000
        while not stop.is_set():
            add_readings(store, [reading(seq + i) for i in range(5)])
            seq += 5
            written += 5

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        summary = export_backup(store.path, store.image_dir, tmp_path / "backup", identity={"site_id": "chc-test"})
    finally:
        stop.set()
        thread.join()
    assert written > 0
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["format"] == "clinic-gateway-backup/1" and manifest["gateway"] == {"site_id": "chc-test"}
    exported = manifest["counts"]["readings"]
    assert 40 <= exported <= 40 + written and summary.images == 3 and summary.missing_images == []
    # Consistent: the snapshot has exactly one outbox message per reading it holds (one transaction each).
    assert manifest["counts"]["outbox"] == exported + other_messages

    import_backup(tmp_path / "backup", dst_dir / "gateway.db", dst_dir / "images")
    new = make_store(dst_dir, clock=FakeClock(T0))
    old, got = snapshot(store), snapshot(new)
    assert got["readings"] == old["readings"][:exported]
    assert got["captures"] == old["captures"]
    # Same messages, same states, same order: a prefix of the old outbox. The 9 in flight (15 claimed - 5 acked -
    # 1 parked) are pending in it (in flight is the old forwarder's memory): the new one sends them again first.
    assert [row[:7] for row in got["outbox"]] == [row[:7] for row in old["outbox"][: len(got["outbox"])]]
    assert Outbox(new).stats().parked == 1
    again = [m.message_id for m in Outbox(new).claim_batch(9)]
    assert again == [m.message_id for m in claimed[5:14]]
    assert Outbox(new).ack(again).applied == 9  # and their late acks count: the sent-through mark came along
    for sha in shas:
        (image,) = new.image_dir.rglob(f"{sha}.jpg")
        assert hashlib.sha256(image.read_bytes()).hexdigest() == sha


def test_tar_backup_round_trip_and_refusals(tmp_path: Path) -> None:
    store = make_store(tmp_path / "a", clock=FakeClock(T0))
    add_readings(store, [reading(1), reading(2)])
    store_capture(store, b"retina")
    sha = hashlib.sha256(b"retina").hexdigest()
    tar_path = tmp_path / "gw.tar.gz"
    export_backup(store.path, store.image_dir, tar_path)
    assert tarfile.is_tarfile(tar_path)
    with pytest.raises(BackupError, match="already exists"):
        export_backup(store.path, store.image_dir, tar_path)

    target = tmp_path / "b"
    import_backup(tar_path, target / "gateway.db", target / "images")
    assert store_holds_data(target / "gateway.db", target / "images")
    # A second import would overwrite data: refused without --force ...
    with pytest.raises(BackupError, match="already holds data"):
        import_backup(tar_path, target / "gateway.db", target / "images")
    # ... and with --force the old store is kept aside, renamed, not deleted.
    again = import_backup(tar_path, target / "gateway.db", target / "images", force=True)
    assert {p.name.split(".replaced-")[0] for p in again.set_aside} >= {"gateway.db", "images"}
    assert all(p.exists() for p in again.set_aside)
    assert len(list((target / "images").rglob(f"{sha}.jpg"))) == 1


def test_events_only_store_counts_as_empty(tmp_path: Path) -> None:
    """A replacement Pi whose daemon already ran once (and queued a clock event) takes an import without --force."""
    fresh = make_store(tmp_path / "fresh")
    add_event(fresh, "clock_untrusted", "not synchronised", level="warning")
    assert not store_holds_data(fresh.path, fresh.image_dir)  # type: ignore[arg-type]
    add_readings(fresh, [reading(1)])
    assert store_holds_data(fresh.path, fresh.image_dir)  # type: ignore[arg-type]


def test_corrupt_backup_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path / "a")
    add_readings(store, [reading(1)])
    store_capture(store, b"img")
    export_backup(store.path, store.image_dir, tmp_path / "bk")
    (image,) = (tmp_path / "bk" / "images").rglob("*.jpg")
    image.write_bytes(b"tampered")
    with pytest.raises(BackupError, match="checksum"):
        import_backup(tmp_path / "bk", tmp_path / "b" / "gateway.db", tmp_path / "b" / "images")
    assert not (tmp_path / "b" / "gateway.db").exists()  # nothing half-restored
    (tmp_path / "junk").mkdir()
    with pytest.raises(BackupError, match="not a gateway backup"):
        import_backup(tmp_path / "junk", tmp_path / "c" / "gateway.db", tmp_path / "c" / "images")


def test_cli_export_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def config(state: Path) -> Path:
        path = state.with_suffix(".toml")
        path.write_text(f'[gateway]\nsite_id = "chc-test"\ngateway_id = "gw-test"\nstate_dir = "{state}"\n')
        return path

    old_cfg, new_cfg = config(tmp_path / "old"), config(tmp_path / "new")
    store = make_store(tmp_path / "old")
    add_readings(store, [reading(s) for s in range(1, 6)])
    assert main(["export", "-c", str(old_cfg), "--to", str(tmp_path / "bk.tar")]) == 0
    assert main(["import", "-c", str(new_cfg), "--from", str(tmp_path / "bk.tar")]) == 0
    assert main(["import", "-c", str(new_cfg), "--from", str(tmp_path / "bk.tar")]) == 2  # refused: has data
    err = capsys.readouterr().err
    assert "already holds data" in err
    new = make_store(tmp_path / "new")
    assert new.scalar("SELECT count(*) FROM readings") == 5
    assert main(["prune", "-c", str(new_cfg)]) == 0
    assert new.scalar("SELECT count(*) FROM readings") == 5  # nothing confirmed: nothing pruned


def test_store_commands_are_registered_and_documented() -> None:
    from gateway.cli import build_parser
    from gateway.commands import store

    parser = build_parser((store.register,))
    help_text = parser.format_help()
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for command in ("export", "import", "prune"):
        assert command in help_text
        assert f"gateway {command} -c /etc/clinic-gateway/gateway.toml" in doc.replace("\\\n     ", "")


def test_import_and_a_second_daemon_refuse_while_the_daemon_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store's instance lock: `gateway import` must not swap the database under a running daemon."""
    state = tmp_path / "state"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f'[gateway]\nsite_id = "chc-test"\ngateway_id = "gw-test"\nstate_dir = "{state}"\n'
        f'[clock]\nsync_check = "assume_synced"\n[forward]\nport = {free_port()}\n[web]\nenabled = false\n'
    )
    old = make_store(tmp_path / "old-pi")
    add_readings(old, [reading(s) for s in range(1, 6)])
    backup = export_backup(tmp_path / "old-pi" / "gateway.db", old.image_dir, tmp_path / "bk.tar").path
    lock = lock_path(state / "gateway.db")

    def daemon() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    first = daemon()
    try:
        deadline = time.monotonic() + 60
        while not (lock.exists() and "the gateway daemon" in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "daemon did not take the store lock"
            time.sleep(0.05)

        assert main(["import", "-c", str(cfg), "--from", str(backup), "--force"]) == 2
        err = capsys.readouterr().err
        assert "StoreInUse" in err and f"the gateway daemon (pid {first.pid})" in err
        assert not list(state.glob("*.replaced-*"))  # nothing was set aside: the refusal came first

        second = daemon()
        out = second.communicate(timeout=60)[0]
        assert second.returncode == 2 and "StoreInUse" in out, out
        assert first.poll() is None  # the running daemon is untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0

    # stopped: the lock is free and the restore goes ahead (the daemon's own store is set aside, kept)
    assert main(["import", "-c", str(cfg), "--from", str(backup), "--force"]) == 0
    assert make_store(state).scalar("SELECT count(*) FROM readings") == 5
