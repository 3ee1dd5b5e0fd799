"""Store start-up tells "cannot open" (permissions, owner, read-only) from "corrupt" (issue 15, item 4).

A database the service user may not use (left root-owned by ``sudo gateway ...``, or a WAL file root created)
must stop the daemon with one line naming the file, its owner and its mode, and leave the data where it is.
Only a file that opens but is not a database, or fails SQLite's integrity check, is quarantined.

File modes do not stop root, so the store is opened by a real process running as an unprivileged user
(``support.unprivileged``): ``nobody`` through setpriv when the tests run as root, else the test's own user.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.broker import free_port
from support.factories import make_store, reading
from support.unprivileged import ServiceUser

from gateway.errors import StoreCannotOpen
from gateway.store import open_store
from gateway.store.readings import add_readings

OPEN_STORE = """
import json, sys
from pathlib import Path
from gateway.errors import StoreCannotOpen
from gateway.store import open_store

db = Path(sys.argv[1])
try:
    store = open_store(db, db.parent / "images")
except StoreCannotOpen as exc:
    doc = {"outcome": "cannot open", "path": str(exc.path), "owner": exc.owner, "mode": exc.mode,
           "access": exc.access, "user": exc.user, "message": str(exc)}
else:
    doc = {"outcome": "opened", "readings": store.scalar("SELECT count(*) FROM readings"),
           "quarantined": store.get_kv("quarantined_file")}
print(json.dumps(doc))
"""


def populated_store(state: Path, service_user: ServiceUser, readings: int = 3) -> str:
    """A real store with unsent readings, owned by the service user; returns the database's SHA-256."""
    state.mkdir()
    store = make_store(state)
    add_readings(store, [reading(i) for i in range(1, readings + 1)])
    store.close()
    for path in (state, state / "images", *state.iterdir()):
        service_user.give(path)
    return digest(state / "gateway.db")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_as_service(service_user: ServiceUser, db: Path) -> dict[str, Any]:
    done = service_user.run([sys.executable, "-c", OPEN_STORE, str(db)], timeout=60)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def service_name(service_user: ServiceUser) -> str:
    return pwd.getpwuid(service_user.uid).pw_name


def expected_owner(service_user: ServiceUser) -> str:
    """Who owns what was taken away: root (as root), else the service user itself (chmod only)."""
    return "root" if service_user.as_root else service_name(service_user)


def test_daemon_stops_with_one_line_on_a_database_it_may_not_read(service_user: ServiceUser, shared_dir: Path) -> None:
    """The issue's case: ``gateway.db`` root-owned 0600. Before: quarantined, the gateway started empty."""
    state = shared_dir / "state"
    before = populated_store(state, service_user)
    db = state / "gateway.db"
    service_user.take_away(db)
    mode = db.stat().st_mode & 0o777
    cfg = shared_dir / "gateway.toml"
    cfg.write_text(
        f'[gateway]\nsite_id = "chc-test"\ngateway_id = "gw-test"\nstate_dir = "{state}"\n'
        f'[clock]\nsync_check = "assume_synced"\n[forward]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        "[web]\nenabled = false\n"
    )
    cfg.chmod(0o644)
    log = shared_dir / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            service_user.argv([sys.executable, "-m", "gateway", "run", "-c", str(cfg)]),
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "HOME": str(state)},  # the service's home is its state directory
            stdout=out,
            stderr=out,
            text=True,
        )
    try:
        # Wait on what happens: the daemon exits, or (the old behaviour) the file is moved aside.
        deadline = time.monotonic() + 60
        while proc.poll() is None and not list(state.glob("*.corrupt-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not list(state.glob("*.corrupt-*")), "a database it may not read was quarantined as corrupt"
        assert proc.poll() is not None, f"the daemon kept running on a store it cannot open:\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 2
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    owner, user = expected_owner(service_user), service_name(service_user)
    assert lines[0].startswith(
        f"gateway: StoreCannotOpen: cannot open the store: {user} may not read {db} "
        f"(owner {owner}, mode {mode:04o}): Permission denied; it is not corrupt and was left in place"
    ), lines[0]
    # The data is where it was, untouched, with its unsent readings.
    assert digest(db) == before
    assert make_store(state).scalar("SELECT count(*) FROM readings") == 3


@pytest.mark.parametrize(
    ("case", "access"),
    [
        ("database root-owned 0600", "read"),
        ("database read-only", "write"),
        ("WAL file left by root", "write"),
        ("SHM file left by root", "write"),
        ("directory read-only", "create files in"),
    ],
)
def test_each_kind_of_cannot_open_names_file_owner_mode_and_access(
    service_user: ServiceUser, shared_dir: Path, case: str, access: str
) -> None:
    state = shared_dir / "state"
    before = populated_store(state, service_user)
    db = state / "gateway.db"
    target = {
        "database root-owned 0600": db,
        "database read-only": db,
        "WAL file left by root": state / "gateway.db-wal",
        "SHM file left by root": state / "gateway.db-shm",
        "directory read-only": state,
    }[case]
    if not target.exists():
        target.touch()  # what a crashed root command leaves: an empty -wal or -shm
    service_user.take_away(target, write_only=access != "read")
    mode = target.stat().st_mode & 0o777

    doc = open_as_service(service_user, db)
    assert doc["outcome"] == "cannot open", doc
    assert (doc["path"], doc["access"], doc["owner"], doc["mode"]) == (
        str(target),
        access,
        expected_owner(service_user),
        mode,
    )
    assert f"(owner {doc['owner']}, mode {mode:04o})" in doc["message"]
    assert not list(state.glob("*.corrupt-*"))
    assert digest(db) == before


def test_corrupt_database_is_still_quarantined_for_the_service_user(
    service_user: ServiceUser, shared_dir: Path
) -> None:
    state = shared_dir / "state"
    populated_store(state, service_user)
    db = state / "gateway.db"
    db.write_bytes(b"not a database " * 1000)
    service_user.give(db)
    doc = open_as_service(service_user, db)
    assert doc["outcome"] == "opened" and doc["readings"] == 0
    assert doc["quarantined"] and Path(doc["quarantined"]).name.startswith("gateway.db.corrupt-")


def test_database_failing_the_integrity_check_is_quarantined(tmp_path: Path) -> None:
    """A valid header over damaged pages: it opens, but SQLite's quick check fails. That is corruption."""
    store = make_store(tmp_path)
    add_readings(store, [reading(i) for i in range(1, 400)])
    store.close()
    db = tmp_path / "gateway.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(db.read_bytes())
    assert len(data) > 6 * page_size
    for page in range(2, len(data) // page_size):  # every page but the header page: b-tree headers garbled
        data[page * page_size : page * page_size + 16] = b"\xa5" * 16
    db.write_bytes(bytes(data))
    store = make_store(tmp_path)
    moved = [p for p in tmp_path.glob("gateway.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1 and moved[0].read_bytes() == bytes(data)
    assert store.scalar("SELECT count(*) FROM readings") == 0


def test_cannot_open_error_carries_its_data(tmp_path: Path) -> None:
    """The exception's attributes, for callers that branch on them (never on the text)."""
    exc = StoreCannotOpen(
        path=tmp_path / "gateway.db", owner="root", mode=0o600, access="read", user="clinic-gateway", reason="denied"
    )
    assert (exc.path, exc.owner, exc.mode, exc.access, exc.user) == (
        tmp_path / "gateway.db",
        "root",
        0o600,
        "read",
        "clinic-gateway",
    )
    assert str(exc).startswith(f"cannot open the store: clinic-gateway may not read {tmp_path / 'gateway.db'}")


def test_root_opens_what_root_may_open(tmp_path: Path) -> None:
    """Commands run as root (``gateway export``) are not refused by the check."""
    store = make_store(tmp_path)
    add_readings(store, [reading(1)])
    store.close()
    (tmp_path / "gateway.db").chmod(0o600)
    assert open_store(tmp_path / "gateway.db", tmp_path / "images").scalar("SELECT count(*) FROM readings") == 1
