"""Issue 13, desk: the nurse page shows the visit's blood pressure beside the glucose readings.

- End to end: real bleak against an emulated two-user cuff on an emulated BlueZ, the real meter component
  (BLE strategy) in the core thread, the real app: the nurse chooses which cuff user is this patient on the
  desk page; the session page lists only that user's readings, highlights those above the programme target,
  flags what the cuff said (irregular pulse, body movement, cuff fit), in English and Chinese.
- The target is the configured one (``meters.blood_pressure``), default 140/90.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from support.ble import emulated_bluez
from support.factories import bp_reading
from web_harness import CoreThread, add_users, csrf_of, login, make_config, post_form

from gateway.clock import FakeClock
from gateway.desk import BleSyncRequest
from gateway.emulate.ble_cuff import CuffProfile, EmulatedCuff, make_cuff_readings
from gateway.emulate.bluez_env import BluezEnv
from gateway.meters.source import MeterSource
from gateway.records import CuffStatus, PressureUnit
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store import sessions as store_sessions
from gateway.store.blood_pressure import add_blood_pressure
from gateway.web.app import create_app

PATIENT = "110105-PX-4471"
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
ROW = re.compile(r'<tr class="bp( band-high)?">(.*?)</tr>', re.S)


def _bp_rows(html: str) -> list[tuple[bool, str]]:
    """(highlighted, row text without tags) of each blood pressure row on a page."""
    return [
        (bool(high), re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip()) for high, body in ROW.findall(html)
    ]


@pytest.fixture
def bluez() -> Iterator[BluezEnv]:
    with emulated_bluez(2) as env:
        yield env


@pytest.fixture
def ble_runtime(tmp_path: Path) -> Iterator[Runtime]:
    config = make_config(
        tmp_path / "state",
        gateway={"timezone": "Asia/Shanghai"},
        meters={"ble": {"enabled": True, "adapter": "hci0", "connect_timeout_s": 5, "racp_timeout_s": 5,
                        "record_timeout_s": 5}, "serial": {"enabled": False}},
    )  # fmt: skip
    rt = open_runtime(config, clock=FakeClock(NOW, synchronised=True))
    add_users(rt)
    yield rt
    rt.store.close()


@pytest.mark.ble
def test_nurse_chooses_the_cuff_user_and_sees_the_visits_blood_pressure(bluez, ble_runtime: Runtime) -> None:
    runtime = ble_runtime
    local_now = NOW.astimezone(ZoneInfo(runtime.config.gateway.timezone)).replace(tzinfo=None)
    cuff = EmulatedCuff(
        BluezEnv.adapter_path(1),
        readings=make_cuff_readings(14, users=(1, 2)),  # user 2: sequences 2, 4, ... 14
        profile=CuffProfile(serial="CUFF-0001", stored_records=True),
        now=lambda: local_now,
    )
    up = asyncio.Event()

    async def run_cuff() -> None:
        async with cuff:
            up.set()
            await asyncio.Event().wait()

    core = CoreThread(runtime)
    source = MeterSource(runtime)
    core.start(source.run)
    core.start(run_cuff)
    client = create_app(GatewayServices(runtime), runtime.config).test_client()
    try:
        deadline = time.monotonic() + 30
        while not (up.is_set() and runtime.desk.handles(BleSyncRequest)):
            assert time.monotonic() < deadline, "the cuff or the meter component did not start"
            time.sleep(0.05)
        login(client, "nina")
        assert cuff.address is not None

        def download(cuff_user: str) -> str:
            started = post_form(client, "/nurse", "/nurse/sync",
                                {"patient_id": PATIENT, "target": cuff.address, "cuff_user": cuff_user})  # fmt: skip
            session_id = started.headers["Location"].rsplit("/", 1)[-1]
            finish_by = time.monotonic() + 30
            while not client.get(f"/nurse/api/progress/{session_id}").get_json()["finished"]:
                assert time.monotonic() < finish_by, "the download did not finish"
                time.sleep(0.05)
            return session_id

        session_id = download("2")
        html = client.get(f"/nurse/session/{session_id}").get_data(as_text=True)

        # Only user 2's seven measurements are this patient's; user 1's were kept without a patient.
        rows = _bp_rows(html)
        expected = [r for r in make_cuff_readings(14, users=(1, 2)) if r.user_id == 2]
        assert len(rows) == 7
        values = sorted(f"{r.systolic}/{r.diastolic}" for r in expected)
        assert sorted(re.search(r"(\d+)/(\d+)", text).group(0) for _, text in rows) == values  # type: ignore[union-attr]
        assert "7 of them are measurements of the cuff's other users, kept without a patient." in html
        # Above 140/90 is highlighted: 146/92 (sequence 2) is, 120/84 (sequence 4) is not.
        by_value = {re.search(r"(\d+)/(\d+)", text).group(0): (high, text) for high, text in rows}  # type: ignore[union-attr]
        assert by_value["146/92"][0] and "Above target" in by_value["146/92"][1]
        assert not by_value["120/84"][0] and "Above target" not in by_value["120/84"][1]
        # What the cuff said: sequence 14 an irregular pulse; sequence 13 (a loose cuff) is user 1's, not shown.
        irregular = next(r for r in expected if r.sequence == 14)
        assert "irregular pulse" in by_value[f"{irregular.systolic}/{irregular.diastolic}"][1]
        assert 'data-status="irregular_pulse"' in html and 'data-status="cuff_too_loose"' not in html

        # The cuff is now known: the desk page offers the cuff-user choice for it (and not for other devices), and
        # lists user 1's measurements as waiting for a patient, without filling in this one.
        desk = post_form(client, "/nurse", "/nurse", {"patient_id": PATIENT}).get_data(as_text=True)
        assert 'data-cuff="bps:CUFF-0001"' in desk
        waiting = desk.split('id="unassigned"', 1)[1].split("</section>", 1)[0]
        [row] = re.findall(r'<tr data-meter="bps:CUFF-0001" data-record="blood_pressure" data-cuff-user="1">.*?</tr>',
                           waiting, re.S)  # fmt: skip
        assert ">7<" in row and 'name="patient_id" class="grow" value=""' in row

        # The session page offers user 1's seven to whichever patient the nurse types (never to this one).
        card = html.split('id="cuff-unassigned"', 1)[1].split("</section>", 1)[0]
        assert 'data-cuff-user="1"' in card and ">7<" in card and PATIENT not in card
        through = re.search(r'name="through" value="(\d+)"', card)
        assert through is not None
        answer = post_form(client, f"/nurse/session/{session_id}", "/nurse/assign",
                           {"meter_id": "bps:CUFF-0001", "through": through.group(1), "record": "blood_pressure",
                            "cuff_user": "1", "patient_id": "P-SPOUSE", "back": session_id})  # fmt: skip
        assert answer.status_code == 302 and answer.headers["Location"].endswith(f"/nurse/session/{session_id}")
        after = client.get(f"/nurse/session/{session_id}").get_data(as_text=True)
        assert "7 readings assigned to patient P-SPOUSE." in after and 'id="cuff-unassigned"' not in after
        assert len(_bp_rows(after)) == 7  # this patient's own, unchanged
        by_user = {(r["cuff_user"], r["patient_id"]) for r in runtime.store.query(
            "SELECT cuff_user, patient_id FROM blood_pressure")}  # fmt: skip
        assert by_user == {(1, "P-SPOUSE"), (2, PATIENT)}
        [message] = runtime.store.query("SELECT b.topic FROM outbox o JOIN outbox_bodies b ON b.seq = o.seq "
                                        "WHERE o.kind = 'blood_pressure_assignment'")  # fmt: skip
        assert message["topic"].endswith("blood-pressure/assignment")

        # A later visit: the nurse leaves "its one user (one-person cuff)", but this cuff has named two users: none
        # of its new measurements is this patient's, the page says so and offers both users' for assignment.
        cuff.add_readings(2, users=(1, 2))
        later = download("")
        page = client.get(f"/nurse/session/{later}").get_data(as_text=True)
        assert 'id="shared-cuff"' in page and 'id="other-cuff-users"' not in page
        assert len(_bp_rows(page)) == 7  # the visit's: the first download's seven, none of the new two
        card = page.split('id="cuff-unassigned"', 1)[1].split("</section>", 1)[0]
        assert 'data-cuff-user="1"' in card and 'data-cuff-user="2"' in card and PATIENT not in card
        new = runtime.store.query("SELECT cuff_user, patient_id FROM blood_pressure WHERE session_id = ?", [later])
        assert sorted((r["cuff_user"], r["patient_id"]) for r in new) == [(1, None), (2, None)]

        # zh
        client.post("/lang", data={"lang": "zh", "next": "/nurse", "csrf_token": csrf_of(client, "/nurse")})
        zh = client.get(f"/nurse/session/{session_id}").get_data(as_text=True)
        assert "血压" in zh and "高于目标" in zh and "脉搏不齐" in zh
    finally:
        core.stop()


def test_highlight_follows_the_configured_target(tmp_path: Path, runtime: Runtime) -> None:
    """Default 140/90; a programme target of 130/80 (config) highlights more; the readings of the visit only."""
    store = runtime.store
    session = store_sessions.start_session(store, kind="meter", patient_id="P-1", operator="nina")
    other = store_sessions.start_session(store, kind="meter", patient_id="P-2", operator="nina")
    add_blood_pressure(store, [
        bp_reading(1, systolic=141, diastolic=80, patient_id="P-1", session_id=session),
        bp_reading(2, systolic=135, diastolic=85, patient_id="P-1", session_id=session,
                   status=(CuffStatus.BODY_MOVEMENT,)),
        bp_reading(3, systolic=18.0, diastolic=11.0, unit=PressureUnit.KPA, patient_id="P-1", session_id=session),
        bp_reading(4, systolic=190, diastolic=120, patient_id="P-2", session_id=other),
    ])  # fmt: skip
    rows = GatewayServices(runtime).visit_blood_pressure(session)
    assert sorted((r.reading.systolic_mmhg, r.above_target) for r in rows) == [
        (135.0, False),
        (135.0, False),
        (141.0, True),
    ]
    assert [r.reading.status for r in rows if r.reading.status] == [("body_movement",)]

    config = runtime.config
    target = config.meters.blood_pressure.model_copy(update={"target_systolic_mmhg": 130, "target_diastolic_mmhg": 80})
    strict = config.model_copy(update={"meters": config.meters.model_copy(update={"blood_pressure": target})})
    strict_runtime = Runtime(config=strict, store=store, clock=runtime.clock)
    rows = GatewayServices(strict_runtime).visit_blood_pressure(session)
    assert all(r.above_target for r in rows)
