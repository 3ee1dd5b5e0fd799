"""Issue 14, the nurse's desk (items 1-3): readings downloaded without a patient wait in an "unassigned" list and
are assigned in one action; a later download for the patient says they are waiting; the link prompt reflects the
linked state; progress says n of N; failed downloads are listed with a plain-language reason; the synthetic
meter offers no Download that cannot work; "Last download" is clinic time.

Real store file, real app and test client, the real DownloadSession over a scripted meter driver, the real
MeterSource for the failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from flask.testing import FlaskClient
from support.factories import MESSAGES, bp_reading
from web_harness import (
    CoreThread,
    ScriptedMeter,
    add_users,
    csrf_of,
    login,
    make_config,
    post_form,
    scripted_records,
)

from gateway.clock import FakeClock
from gateway.desk import DeskState, MeterProgress, SerialSyncRequest
from gateway.meters.session import DownloadSession
from gateway.meters.source import MeterSource
from gateway.records import CuffStatus, MeterInfo, MeterRecord, Unit
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store import audit
from gateway.store import sessions as store_sessions
from gateway.store.blood_pressure import add_blood_pressure
from gateway.store.readings import upsert_meter
from gateway.web.app import create_app
from gateway.wire import contract

PATIENT = "110105-PX-4471"
METER = "serial:TM0042"


def auto_sync(runtime: Runtime) -> str:
    """What auto-sync does when the meter is plugged in before any patient is set: a download without patient."""
    session = DownloadSession(
        runtime.store,
        runtime.clock,
        ScriptedMeter(METER, scripted_records(), 0.0),
        tz=ZoneInfo(runtime.config.gateway.timezone),
    )
    result = asyncio.run(session.run())
    assert result.added == 6
    return result.session_id


def desk_download(client: FlaskClient) -> str:
    started = post_form(client, "/nurse", "/nurse/sync", {"patient_id": PATIENT, "target": METER})
    session_id = str(started.headers["Location"]).rsplit("/", 1)[-1]
    deadline = time.monotonic() + 30
    while not client.get(f"/nurse/api/progress/{session_id}").get_json()["finished"]:
        assert time.monotonic() < deadline, "the download did not finish"
        time.sleep(0.05)
    return session_id


def _section(html: str, element_id: str) -> str:
    return html.split(f'id="{element_id}"', 1)[1].split("</section>", 1)[0]


def test_auto_synced_readings_wait_unassigned_and_the_nurse_assigns_them(client: FlaskClient, runtime: Runtime) -> None:
    auto_sync(runtime)
    login(client, "nina")
    desk = client.get("/nurse").get_data(as_text=True)
    waiting = _section(desk, "unassigned")
    assert METER in waiting and ">6<" in waiting
    through = re.search(r'name="through" value="(\d+)"', waiting)
    assert through is not None

    answer = post_form(client, "/nurse", "/nurse/assign",
                       {"meter_id": METER, "through": through.group(1), "patient_id": PATIENT})  # fmt: skip
    html = answer.get_data(as_text=True)
    assert "6 readings assigned to patient" in html and 'id="unassigned"' not in html

    patients = {r["patient_id"] for r in runtime.store.query("SELECT patient_id FROM readings")}
    assert patients == {PATIENT}
    [entry] = [r for r in audit.recent(runtime.store) if r.action == "assign_readings"]
    assert (entry.actor, entry.patient_id, entry.target_id) == ("nina", PATIENT, METER)
    [message] = runtime.store.query(f"SELECT * FROM {MESSAGES} WHERE kind = 'assignment'")
    doc = json.loads(message["payload"])
    contract.validate(contract.SCHEMA_ASSIGNMENT, doc)
    assert len(doc["reading_ids"]) == 6 and doc["patient_id"] == PATIENT
    # "Today's downloads" now names the patient of the auto-synced download.
    assert PATIENT in _section(client.get("/nurse").get_data(as_text=True), "sessions-table")


def test_a_later_download_for_the_patient_says_the_readings_are_waiting(
    client: FlaskClient, runtime: Runtime, core: CoreThread
) -> None:
    upsert_meter(runtime.store, MeterInfo(meter_id=METER, family="scripted", transport="serial", serial="TM0042"))
    auto_sync(runtime)
    login(client, "nina")
    session_id = desk_download(client)  # nothing new: the meter's six readings are stored, without patient
    page = client.get(f"/nurse/session/{session_id}").get_data(as_text=True)
    assert "0 new readings" in page
    waiting = _section(page, "session-unassigned")
    assert "6 readings from this meter were already downloaded without a patient" in waiting
    assert 'id="assign-earlier"' in waiting
    through = re.search(r'name="through" value="(\d+)"', waiting)
    assert through is not None
    form = {"meter_id": METER, "through": through.group(1), "patient_id": PATIENT, "back": session_id}
    back = post_form(client, f"/nurse/session/{session_id}", "/nurse/assign", form)
    assert back.status_code == 302 and back.headers["Location"].endswith(f"/nurse/session/{session_id}")
    again = client.get(f"/nurse/session/{session_id}").get_data(as_text=True)
    assert "6 readings assigned to patient" in again and 'id="session-unassigned"' not in again
    assert runtime.store.scalar("SELECT count(*) FROM readings WHERE patient_id IS NULL") == 0


def test_the_link_prompt_reflects_the_linked_state(client: FlaskClient, runtime: Runtime, core: CoreThread) -> None:
    upsert_meter(runtime.store, MeterInfo(meter_id=METER, family="scripted", transport="serial", serial="TM0042"))
    login(client, "nina")
    session_id = desk_download(client)
    page = f"/nurse/session/{session_id}"
    assert 'id="confirm-link"' in client.get(page).get_data(as_text=True)
    post_form(client, page, f"{page}/link", {})
    linked = client.get(page).get_data(as_text=True)
    assert "Meter linked to this patient." in linked
    assert 'id="meter-linked"' in linked
    assert 'id="confirm-link"' not in linked and "Does this meter belong" not in linked


def test_progress_says_connecting_then_n_of_n_with_a_bar(client: FlaskClient, runtime: Runtime) -> None:
    login(client, "nina")
    runtime.progress.put("s-1", MeterProgress(state=DeskState.CONNECTING, target=METER))
    connecting = client.get("/nurse/session/s-1").get_data(as_text=True)
    assert "connecting to the meter" in connecting
    assert not re.search(r"Downloading…\s*<[^>]*>\s*0", connecting)
    runtime.progress.put("s-1", MeterProgress(state=DeskState.RUNNING, done=3, total=10, target=METER))
    running = client.get("/nurse/session/s-1").get_data(as_text=True)
    assert "3 of 10" in running and 'max="10" value="3"' in running
    assert client.get("/nurse/api/progress/s-1").get_json() | {"meter_id": None} == {
        "state": "running", "done": 3, "total": 10, "meter_id": None, "finished": False}  # fmt: skip


def test_a_failed_download_is_listed_with_a_plain_reason(tmp_path: Path, fake_clock: FakeClock) -> None:
    runtime = open_runtime(make_config(tmp_path / "serial", meters={"serial": {"enabled": True}}), clock=fake_clock)
    add_users(runtime)
    client = create_app(GatewayServices(runtime), runtime.config).test_client()
    source = MeterSource(runtime)  # the real meter component, its serial transport on
    request = SerialSyncRequest(request_id="f" * 32, target=METER, patient_id=PATIENT, operator="nina")
    assert asyncio.run(source.sync(request)) is None  # the meter is not plugged in
    login(client, "nina")
    today = _section(client.get("/nurse").get_data(as_text=True), "sessions-table")
    assert 'class="state-failed"' in today
    assert "The meter did not answer" in today
    assert "DeviceNotFound" not in today and "not plugged in" not in today
    session = client.get(f"/nurse/session/{'f' * 32}").get_data(as_text=True)
    assert "The meter did not answer" in session and "DeviceNotFound" not in session
    runtime.store.close()


def test_no_download_button_for_the_synthetic_meter_and_last_download_in_clinic_time(
    client: FlaskClient, runtime: Runtime, core: CoreThread
) -> None:
    upsert_meter(runtime.store, MeterInfo(meter_id="synthetic:demo-0001", family="synthetic", transport="none",
                                                  serial="demo-0001"))  # fmt: skip
    upsert_meter(runtime.store, MeterInfo(meter_id=METER, family="scripted", transport="serial", serial="TM0042"))
    with runtime.store.transaction() as db:
        db.execute("UPDATE meters SET last_sync = '2026-11-23T02:40:00.000+00:00'")
    login(client, "nina")
    desk = _section(post_form(client, "/nurse", "/nurse", {"patient_id": PATIENT}).get_data(as_text=True),
                    "meters-table")  # fmt: skip
    assert 'data-meter="synthetic:demo-0001"' not in desk and "arrive by themselves" in desk
    assert f'data-meter="{METER}"' in desk
    assert "2026-11-23T02:40" not in desk
    assert "2026-11-23 10:40 UTC+8" in desk


# -- item 4 and 5: the glucose picture and the visit sheet -------------------------------------------------------
def _visit_with_history(runtime: Runtime) -> str:
    """A patient seen on 10 November (a reading before it), downloaded today: the six scripted readings of
    22 November, and two control-solution tests of the meter (2.4 and 21.0 mmol/L) that must count nowhere."""
    with runtime.store.transaction() as db:
        db.execute("INSERT INTO sessions (session_id, kind, patient_id, state, started_at) VALUES "
                   "('visit-1', 'meter', ?, 'done', '2026-11-10T02:00:00.000+00:00')", [PATIENT])  # fmt: skip
    before = replace(scripted_records()[0], sequence=100, meter_time=datetime(2026, 11, 5, 8, 0), value=2.0)
    records = [*scripted_records(), before]
    records += [replace(records[0], sequence=7, value=2.4, control_solution=True),
                replace(records[3], sequence=8, value=21.0, control_solution=True)]  # fmt: skip
    session = DownloadSession(runtime.store, runtime.clock, ScriptedMeter(METER, records, 0.0),
                              tz=ZoneInfo(runtime.config.gateway.timezone), patient_id=PATIENT)  # fmt: skip
    result = asyncio.run(session.run())
    assert (result.added, result.qc_added) == (7, 2)
    return result.session_id


def test_the_visit_picture_chart_and_summary(client: FlaskClient, runtime: Runtime) -> None:
    session_id = _visit_with_history(runtime)
    login(client, "nina")
    html = client.get(f"/nurse/session/{session_id}").get_data(as_text=True)
    picture = _section(html, "glucose-picture")
    assert "2026-11-10 10:00 UTC+8" in picture  # the last visit, clinic time
    svg = picture.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert '<title id="chart-title">' in svg and '<desc id="chart-desc">' in svg and 'role="img"' in svg
    assert 'class="band"' in svg
    # six readings since the visit (not the one of 5 November, not the two control tests)
    assert svg.count('class="pt low"') == 1 and svg.count('class="pt high"') == 1 and svg.count("<circle") == 4
    # each mark's tooltip: when (clinic time) and what; the low and the high drawn last, so no circle hides them
    assert "<title>2026-11-22 10:30 · 3.2 mmol/L · Low</title>" in svg
    assert "<title>2026-11-22 13:30 · 15.1 mmol/L · High</title>" in svg
    assert "<title>2026-11-22 07:30 · 5.6 mmol/L</title></circle>" in svg
    assert svg.rindex("<circle") < svg.index('class="pt low"') < svg.index('class="pt high"')
    # by hand: 5.6 3.2 15.1 7.8 6.1 9.0 -> mean 46.8 / 6 = 7.8; SD 4.09; 1 below 3.9, 1 above 10.0 of 6
    assert re.search(r'id="sum-count">6<', picture)
    assert re.search(r'id="sum-mean">7\.8 mmol/L<', picture)
    assert re.search(r'id="sum-sd">4\.1 mmol/L<', picture)
    assert re.search(r'id="sum-in">67 %<', picture) and re.search(r'id="sum-below">17 %<', picture)
    assert re.search(r'id="sum-above">17 %<', picture) and re.search(r'id="sum-lowest">3\.2 mmol/L<', picture)
    assert "not given: needs readings over at least 14 days and at least 28 readings" in picture
    assert "http" not in svg.replace("http://www.w3.org/2000/svg", "")  # nothing fetched: no CDN


def test_a_visit_of_hundreds_of_readings_draws_each_one_in_a_path_of_its_kind(
    client: FlaskClient, runtime: Runtime
) -> None:
    # A first download of a meter's history: 700 readings every 15 minutes, a quarter each of 5.6, 3.2 (low),
    # 15.1 (above the hyperglycaemia line) and 7.8 mmol/L.
    values = [5.6, 3.2, 15.1, 7.8]
    start = datetime(2026, 11, 15, 0, 0)
    records = [MeterRecord(sequence=i + 1, meter_time=start + timedelta(minutes=15 * i), value=values[i % 4],
                           unit=Unit.MMOL_L) for i in range(700)]  # fmt: skip
    session = DownloadSession(runtime.store, runtime.clock, ScriptedMeter(METER, records, 0.0),
                              tz=ZoneInfo(runtime.config.gateway.timezone), patient_id=PATIENT)  # fmt: skip
    result = asyncio.run(session.run())
    assert result.added == 700
    login(client, "nina")
    picture = _section(client.get(f"/nurse/session/{result.session_id}").get_data(as_text=True), "glucose-picture")
    assert re.search(r'id="sum-count">700<', picture)
    svg = picture.split("<svg", 1)[1].split("</svg>", 1)[0]
    # every reading drawn, in one path per kind (circles as two arcs, triangles down for lows, up for highs);
    # no element nor tooltip per reading
    paths = dict(re.findall(r'<path class="(pt[a-z ]*)" d="([^"]*)"/>', svg))
    assert set(paths) == {"pt", "pt low", "pt high"}
    assert paths["pt"].count("a3.5,3.5 0 1,0 7,0a3.5,3.5 0 1,0 -7,0") == 350
    assert paths["pt low"].count("h10l-5,9z") == 175 and paths["pt high"].count("h10l-5,-9z") == 175
    assert "<circle" not in svg and svg.count("<title") == 1  # the chart's own title
    # the first low (00:15 clinic time) where a mark of its own would be: x = 48 + 0.25 / 24 * 564 = 53.9,
    # y = 228 - 3.2 / 16.1 * 216 = 185.1 (the axis reaches 1 above the highest, 15.1); the triangle from (x - 5, y - 4)
    assert paths["pt low"].startswith("M48.9,181.1h10l-5,9zM")


def test_the_picture_and_the_readings_follow_the_configured_unit(tmp_path: Path, fake_clock: FakeClock) -> None:
    runtime = open_runtime(make_config(tmp_path / "mgdl", glucose={"unit": "mg/dL"}), clock=fake_clock)
    add_users(runtime)
    client = create_app(GatewayServices(runtime), runtime.config).test_client()
    session_id = _visit_with_history(runtime)
    login(client, "nina")
    html = client.get(f"/nurse/session/{session_id}").get_data(as_text=True)
    picture = _section(html, "glucose-picture")
    assert re.search(r'id="sum-mean">141 mg/dL<', picture)  # 7.8 x 18.016 = 140.5
    assert re.search(r'id="sum-lowest">58 mg/dL<', picture)  # 3.2 x 18.016 = 57.7
    assert "In range (70 to 180 mg/dL)" in picture
    # The download's readings table and the meter's QC in the same unit as the picture (was mmol/L always).
    table = html.split('id="readings-table"', 1)[1].split("</table>", 1)[0]
    assert "<th>mg/dL</th>" in table and "mmol/L</th>" not in table
    values = re.findall(r"<td class=\"num\"><strong>([^<]+)</strong>", table)
    # 2.0 (5 November) 3.2 5.6 6.1 7.8 9.0 15.1 mmol/L x 18.016
    assert sorted(values, key=int) == ["36", "58", "101", "110", "141", "162", "272"]
    assert "&lt; 70 mg/dL" in html and "&gt; 250 mg/dL" in html  # 3.9 and 13.9 mmol/L
    qc = html.split('id="qc-table"', 1)[1].split("</table>", 1)[0]
    assert "<th>mg/dL</th>" in qc and '<td class="num">43</td>' in qc and '<td class="num">378</td>' in qc
    runtime.store.close()


def test_the_printable_visit_sheet(client: FlaskClient, runtime: Runtime) -> None:
    session_id = _visit_with_history(runtime)
    login(client, "nina")
    assert f"/nurse/session/{session_id}/sheet" in client.get(f"/nurse/session/{session_id}").get_data(as_text=True)
    sheet = client.get(f"/nurse/session/{session_id}/sheet").get_data(as_text=True)
    assert PATIENT in sheet and "<svg" in sheet and 'id="glucose-summary"' in sheet
    readings = _section(sheet, "sheet-readings")
    assert readings.count("<li") == 6 and "2.4" not in readings and "21.0" not in readings
    qc = _section(sheet, "sheet-qc")
    assert "2.4" in qc and "21.0" in qc  # the meter's QC, apart
    assert 'id="visit-bp"' in sheet and 'data-slot="blood-pressure"' in sheet
    assert 'id="no-bp"' in _section(sheet, "visit-bp")  # no cuff reading in this visit yet
    css = client.get("/static/style.css").get_data(as_text=True)
    assert "@media print" in css and "@page" in css


def test_the_visit_sheet_shows_the_visits_blood_pressure(client: FlaskClient, runtime: Runtime) -> None:
    """Issue 13: the visit sheet includes the visit's blood pressure readings (the download page's partial): those
    of the patient's cuff download today beside the glucose download; above target and the cuff's flags marked
    in words (they print in black and white); another patient's reading is not on it."""
    session_id = _visit_with_history(runtime)
    store = runtime.store
    cuff = store_sessions.start_session(store, kind="meter", patient_id=PATIENT, operator="nina")
    other = store_sessions.start_session(store, kind="meter", patient_id="P-OTHER", operator="nina")
    add_blood_pressure(store, [
        bp_reading(1, systolic=152, diastolic=94, patient_id=PATIENT, session_id=cuff,
                   status=(CuffStatus.IRREGULAR_PULSE,)),
        bp_reading(2, systolic=131, diastolic=82, patient_id=PATIENT, session_id=cuff),
        bp_reading(3, systolic=187, diastolic=111, patient_id="P-OTHER", session_id=other),
    ])  # fmt: skip
    login(client, "nina")
    sheet = client.get(f"/nurse/session/{session_id}/sheet").get_data(as_text=True)
    bp = _section(sheet, "visit-bp")
    rows = re.findall(r'<tr class="bp( band-high)?">(.*?)</tr>', bp, re.S)
    assert [(bool(high), re.search(r'class="bp-value">([\d/]+)<', body)[1]) for high, body in rows] == [  # type: ignore[index]
        (False, "131/82"),
        (True, "152/94"),
    ]
    high = next(body for flag, body in rows if flag)
    assert "Above target" in high and 'data-status="irregular_pulse"' in high and "irregular pulse" in high
    assert "187/111" not in sheet
    css = client.get("/static/style.css").get_data(as_text=True).split("@media print", 1)[1]
    assert "#bp-table .tag" in css  # the marks keep a box on paper

    client.post("/lang", data={"lang": "zh", "next": "/nurse", "csrf_token": csrf_of(client, "/nurse")})
    zh = _section(client.get(f"/nurse/session/{session_id}/sheet").get_data(as_text=True), "visit-bp")
    assert "血压" in zh and "高于目标" in zh and "脉搏不齐" in zh
