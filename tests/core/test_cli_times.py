"""Issue 14, one time convention: the commands that print times in text (``gateway outbox stats``,
``gateway outbox dead-letters``, ``gateway user list``, ``gateway meters list``) write them as the pages do,
in the clinic's zone and labelled (``gateway.clock.clinic_time``), never the stored UTC ISO text.
``--json`` keeps the ISO text (machines read it)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.factories import reading

from gateway.cli import main
from gateway.clock import FakeClock
from gateway.config import load_config
from gateway.records import MeterInfo
from gateway.runtime import open_runtime
from gateway.store.dead_letters import add_dead_letter
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings, upsert_meter
from gateway.store.users import add_user

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")
WHEN = "2026-11-23 10:00 UTC+8"  # the clock's 02:00 UTC at the clinic (Asia/Shanghai)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\nsite_id = "chc-test"\ngateway_id = "gw-test"\nstate_dir = "{tmp_path / "state"}"\n'
        'timezone = "Asia/Shanghai"\n[clock]\nsync_check = "assume_synced"\n[web]\nenabled = false\n'
    )
    runtime = open_runtime(load_config(path), clock=FakeClock(datetime(2026, 11, 23, 2, 0, tzinfo=UTC)))
    store = runtime.store
    try:
        add_user(store, "lin", "scrypt:x", "nurse")
        add_readings(store, [reading(i) for i in range(1, 3)])
        outbox = Outbox(store)
        outbox.ack([m.message_id for m in outbox.claim_batch(1)])
        add_dead_letter(store, topic="cmd/referral", what="referral", field="decision", reason="unknown value",
                        payload=b"{}")  # fmt: skip
        upsert_meter(store, MeterInfo(meter_id="serial:TM0042", family="lifescan", transport="serial",
                                      serial="TM0042"))  # fmt: skip
        with store.transaction() as db:
            db.execute("UPDATE meters SET last_sync = ? WHERE meter_id = ?", ["2026-11-23T02:00:00Z", "serial:TM0042"])
    finally:
        store.close()
    return path


@pytest.mark.parametrize(
    "argv",
    [["outbox", "stats"], ["outbox", "dead-letters"], ["user", "list"], ["meters", "list"]],
    ids=lambda argv: " ".join(argv),
)
def test_text_output_writes_clinic_time_labelled(
    config_file: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert WHEN in out, out
    assert not ISO_UTC.search(out), out


def test_json_output_keeps_the_stored_iso_text(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outbox", "stats", "--json", "-c", str(config_file)]) == 0
    assert json.loads(capsys.readouterr().out)["last_ack_at"].startswith("2026-11-23T02:00")
