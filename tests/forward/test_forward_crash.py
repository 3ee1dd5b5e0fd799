"""Crash safety: the real daemon (``gateway run``) in a subprocess, SIGKILLed at random points while the
synthetic source ingests and the forwarder drains; then restarted to drain. At the reference receiver:
0 readings lost (every reading in the gateway's store arrived) and 0 duplicated (no reading_id and no
(meter_id, sequence) twice)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from support.broker import wait_until

from gateway.emulate.platform import Receiver

ROUNDS = int(os.environ.get("CG_CRASH_ROUNDS", "20"))


def _write_config(path: Path, state: Path, port: int, *, ingest: bool) -> None:
    path.write_text(
        f'[gateway]\nsite_id = "chc-test"\ngateway_id = "gw-test"\nstate_dir = "{state}"\n'
        f'[forward]\nhost = "127.0.0.1"\nport = {port}\nack_timeout_s = 2.0\nbackoff_initial_s = 0.05\n'
        'backoff_max_s = 0.5\ninflight_window = 20\n[clock]\nsync_check = "assume_synced"\n'
        f'[web]\nenabled = false\n[logging]\nlevel = "WARNING"\n'
        f"[demo]\nsynthetic_readings = {'true' if ingest else 'false'}\nsynthetic_interval_s = 0.005\n"
    )


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)], stdout=out, stderr=out)


def _gateway_rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _crash_rounds(tmp_path: Path, broker, receiver: Receiver, rounds: int) -> None:
    state, config, log = tmp_path / "state", tmp_path / "gateway.toml", tmp_path / "daemon.log"
    db = state / "gateway.db"
    rng = random.Random(int(os.environ.get("CG_CRASH_SEED", "20261123")))
    _write_config(config, state, broker.port, ingest=True)

    def stored_now() -> int:
        try:
            return _gateway_rows(db, "SELECT count(*) FROM readings")[0][0]
        except sqlite3.OperationalError:  # not created or not migrated yet
            return 0

    for _ in range(rounds):
        before = stored_now()
        proc = _start(config, log)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.5))  # some kills land during start-up
        else:
            # Wait until this incarnation is ingesting (start-up time depends on machine load), then kill at a
            # random point while ingest and drain run side by side.
            wait_until(lambda b=before: stored_now() > b, timeout_s=60, what="the daemon ingests")
            time.sleep(rng.uniform(0.0, 0.8))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    stored = _gateway_rows(db, "SELECT count(*) FROM readings")[0][0]
    assert stored > rounds, "the daemon never got to ingest"
    _write_config(config, state, broker.port, ingest=False)  # last restart: drain only
    proc = _start(config, log)
    try:
        wait_until(
            lambda: _gateway_rows(db, "SELECT count(*) FROM outbox WHERE state IN ('pending', 'sent')")[0][0] == 0,
            timeout_s=60, what="the restarted daemon drains the outbox",
        )  # fmt: skip
        assert proc.poll() is None, log.read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()[-2000:]

    gateway_ids = {r[0] for r in _gateway_rows(db, "SELECT reading_id FROM readings")}
    assert _gateway_rows(db, "SELECT count(*) FROM outbox WHERE state = 'parked'")[0][0] == 0
    wait_until(lambda: receiver.counts()["readings"] >= len(gateway_ids), what="receiver caught up")
    rows = receiver.readings()
    at_platform = Counter(r["reading_id"] for r in rows)
    lost = gateway_ids - set(at_platform)
    duplicated = [rid for rid, n in at_platform.items() if n > 1]
    assert not lost, f"{len(lost)} readings lost"
    assert not duplicated, f"{len(duplicated)} readings duplicated"
    assert set(at_platform) == gateway_ids  # nothing at the platform that the gateway does not have
    pairs = Counter((r["meter_id"], r["sequence"]) for r in rows)
    assert max(pairs.values()) == 1


def test_sigkill_during_ingest_and_drain_loses_and_duplicates_nothing(tmp_path, broker, receiver_factory) -> None:
    _crash_rounds(tmp_path, broker, receiver_factory(broker), ROUNDS)


@pytest.mark.slow
def test_sigkill_many_rounds(tmp_path, broker, receiver_factory) -> None:
    _crash_rounds(tmp_path, broker, receiver_factory(broker), max(ROUNDS, 100))
