"""Nurse and technician desks through the Flask test client, with a real asyncio core serving the DeskBus."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from web_harness import (
    CoreThread,
    add_users,
    csrf_of,
    login,
    make_config,
    post_form,
)

from gateway.clock import SystemClock
from gateway.emulate import camera as emulated_camera
from gateway.records import MeterInfo
from gateway.retina.service import RetinaService
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store import audit
from gateway.store.readings import patient_for_meter, upsert_meter
from gateway.web.app import create_app
from gateway.web.nurse import clean_patient_id, glucose_band

PATIENT = "110105-PX-4471"
METER = "serial:TM0042"


def _wait_finished(client: FlaskClient, url: str, timeout: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(url).get_json()
        if state["finished"]:
            return state  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{url} did not finish")


def test_bands_and_patient_id_cleaning() -> None:
    assert [glucose_band(v) for v in (3.8, 3.9, 13.9, 14.0)] == ["low", "normal", "normal", "high"]
    assert clean_patient_id("  P-1\n") == "P-1"
    assert clean_patient_id("") is None and clean_patient_id("x" * 65) is None and clean_patient_id("a\x00b") is None


def test_nurse_sees_no_meter_message(client: FlaskClient) -> None:
    login(client, "nina")
    html = post_form(client, "/nurse", "/nurse", {"patient_id": PATIENT}).get_data(as_text=True)
    assert PATIENT in html and 'id="no-meters"' in html


def test_nurse_without_meter_service_gets_a_clear_message(client: FlaskClient, runtime: Runtime) -> None:
    upsert_meter(runtime.store, MeterInfo(meter_id=METER, family="scripted", transport="serial", serial="TM0042"))
    login(client, "nina")
    response = post_form(client, "/nurse", "/nurse/sync", {"patient_id": PATIENT, "target": METER})
    assert response.status_code == 200
    assert "No meter service is running" in response.get_data(as_text=True)


def test_nurse_download_review_and_link(client: FlaskClient, runtime: Runtime, core: CoreThread) -> None:
    upsert_meter(runtime.store, MeterInfo(meter_id=METER, family="scripted", transport="serial", serial="TM0042"))
    login(client, "nina")
    desk = post_form(client, "/nurse", "/nurse", {"patient_id": PATIENT}).get_data(as_text=True)
    assert f'data-meter="{METER}"' in desk
    started = post_form(client, "/nurse", "/nurse/sync", {"patient_id": PATIENT, "target": METER})
    assert started.status_code == 302
    location = started.headers["Location"]
    assert PATIENT not in location  # patient ids never go into URLs
    session_id = location.rsplit("/", 1)[-1]
    progress = _wait_finished(client, f"/nurse/api/progress/{session_id}")
    assert progress["state"] == "done" and progress["done"] == 6 and progress["total"] == 6
    assert PATIENT not in str(progress)
    html = client.get(location).get_data(as_text=True)
    rows = re.findall(r'<tr class="band-(\w+)">', html)
    assert rows == ["normal", "low", "high", "normal", "normal", "normal"]
    assert "15.1" in html and "272 mg/dL" in html  # canonical mmol/L next to the value as measured
    for meal in ("fasting", "before meal", "after meal", "bedtime"):
        assert meal in html
    # Confirm the link: stored and audited with the nurse's name.
    linked = post_form(client, location, f"/nurse/session/{session_id}/link", {})
    assert linked.status_code == 302
    assert patient_for_meter(runtime.store, METER) == PATIENT
    trail = {(r.actor, r.action) for r in audit.recent(runtime.store)}
    assert {("nina", "meter_sync_requested"), ("nina", "link_meter")} <= trail
    assert "Meter linked to this patient." in client.get(location).get_data(as_text=True)
    today = client.get("/nurse").get_data(as_text=True)
    assert session_id in today and PATIENT in today


def test_progress_of_unknown_session_is_404(client: FlaskClient) -> None:
    login(client, "nina")
    assert client.get("/nurse/api/progress/nope").status_code == 404
    assert client.get("/nurse/session/nope").status_code == 404


def test_technician_without_retina_service(client: FlaskClient) -> None:
    login(client, "tom")
    assert 'id="retina-down"' in client.get("/technician").get_data(as_text=True)
    started = post_form(client, "/technician", "/technician", {"patient_id": PATIENT})
    location = started.headers["Location"]
    assert PATIENT not in location
    page = client.get(location).get_data(as_text=True)
    assert PATIENT in page and 'id="retina-down"' in page and 'id="no-preview"' in page
    token = csrf_of(client, location)
    refused = client.post(location + "/capture", data={"eye": "R", "field": "macula", "csrf_token": token})
    assert "not running" in client.get(refused.headers["Location"]).get_data(as_text=True)
    preview = client.get("/technician/preview.mjpg")
    assert preview.status_code == 503


@pytest.fixture
def retina_runtime(tmp_path: Path) -> Iterator[Runtime]:
    video = emulated_camera.write_video(tmp_path / "camera.avi", emulated_camera.frames(6, size=(640, 480)))
    config = make_config(
        tmp_path / "state",
        retina={"camera": {"enabled": True, "device": str(video), "width": 640, "height": 480, "loop": True}},
    )
    rt = open_runtime(config, clock=SystemClock("assume_synced"))
    add_users(rt)
    yield rt
    rt.store.close()


def test_technician_capture_upload_and_retake(retina_runtime: Runtime, tmp_path: Path) -> None:
    runtime = retina_runtime
    service = RetinaService(runtime, load=False)
    runtime.components.append(service)
    core = CoreThread(runtime)
    for request_type in RetinaService.serves:
        runtime.desk.queue(request_type)
    core.start(service.run)
    try:
        client = create_app(GatewayServices(runtime), runtime.config).test_client()
        login(client, "tom")
        location = post_form(client, "/technician", "/technician", {"patient_id": PATIENT}).headers["Location"]
        session_id = location.rsplit("/", 1)[-1]
        token = csrf_of(client, location)
        captured = client.post(location + "/capture", data={"eye": "L", "field": "disc", "csrf_token": token})
        result_url = captured.headers["Location"]
        assert PATIENT not in result_url
        request_id = result_url.split("/result/")[1].split("?")[0]
        assert _wait_finished(client, f"/technician/api/request/{request_id}")["state"] == "done"
        html = client.get(result_url).get_data(as_text=True)
        assert 'id="quality-verdict"' in html and "advisory" in html.lower()
        assert 'id="retake"' in html
        # Retake, then upload a file: three photos of this visit, all for this patient.
        retake = client.post(location + "/capture", data={"eye": "L", "field": "disc", "retake_of": request_id,
                                                           "csrf_token": token})  # fmt: skip
        _wait_finished(
            client, "/technician/api/request/" + retake.headers["Location"].split("/result/")[1].split("?")[0]
        )
        photo = emulated_camera.encode(emulated_camera.synthetic_fundus(3, eye="R"))
        from io import BytesIO

        uploaded = client.post(
            location + "/upload",
            data={"eye": "R", "field": "macula", "csrf_token": token, "photo": (BytesIO(photo), "photo.jpg")},
            content_type="multipart/form-data",
        )
        _wait_finished(
            client, "/technician/api/request/" + uploaded.headers["Location"].split("/result/")[1].split("?")[0]
        )
        captures = GatewayServices(runtime).captures(session_id=session_id)
        assert len(captures) == 3 and {c.patient_id for c in captures} == {PATIENT}
        assert sorted(c.eye for c in captures) == ["L", "L", "R"]
        actions = [r.action for r in audit.recent(runtime.store)]
        assert {"retina_capture", "retina_retake", "retina_upload"} <= set(actions)
        # The preview streams MJPEG parts from the emulated camera.
        preview = client.get("/technician/preview.mjpg", buffered=False)
        assert preview.status_code == 200 and preview.mimetype == "multipart/x-mixed-replace"
        first = next(iter(preview.response))
        assert b"Content-Type: image/jpeg" in first
        preview.close()
    finally:
        core.stop()


def test_technician_sees_referral_decisions_of_this_patient_only(client: FlaskClient, runtime: Runtime) -> None:
    with runtime.store.transaction() as db:
        for rid, patient, decision in (("r1", PATIENT, "refer to ophthalmology"), ("r2", "OTHER-9", "no DR")):
            db.execute(
                "INSERT INTO referrals (referral_id, patient_id, decision, note, grader, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [rid, patient, decision, "moderate NPDR", "Dr Wang", "2026-11-23T01:00:00.000+00:00"],
            )
    login(client, "tom")
    location = post_form(client, "/technician", "/technician", {"patient_id": PATIENT}).headers["Location"]
    html = client.get(location).get_data(as_text=True)
    assert "refer to ophthalmology" in html and "Dr Wang" in html
    assert "no DR" not in html


def test_pages_are_served_by_the_daemon(tmp_path: Path) -> None:
    import asyncio
    import urllib.request

    from gateway.daemon import run_daemon
    from gateway.web import component

    config = make_config(tmp_path / "state")
    runtime = open_runtime(config, clock=SystemClock("assume_synced"))

    async def scenario() -> int:
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(config, runtime=runtime, stop=stop, factories=(component.components,)))
        while not (runtime.component("web") and runtime.component("web").started.is_set()):  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
        port = runtime.component("web").port  # type: ignore[union-attr]

        def fetch() -> tuple[int, bytes]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.status, r.read()

        status, body = await asyncio.to_thread(fetch)
        assert status == 200 and b'cg_component_healthy{component="web"} 1.0' in body
        stop.set()
        return await daemon

    assert asyncio.run(scenario()) == 0


def test_a_big_download_is_shown_a_page_at_a_time_with_counts_over_all_of_it(
    client: FlaskClient, runtime: Runtime
) -> None:
    """Issue 17: a first download may bring a meter's whole history; the session page shows the newest page and
    counts over the whole download, not thousands of rows."""
    import dataclasses

    from support.factories import reading

    from gateway.records import MeterInfo, Unit
    from gateway.store.downloads import DownloadWriter

    writer = DownloadWriter.begin(runtime.store, patient_id=PATIENT, operator="nina")
    session_id = writer.session_id
    writer.meter(MeterInfo(meter_id="gls:BIG", family="gls", transport="ble", serial="BIG"), PATIENT)
    readings = [  # 5 low, 5 high
        reading(s, meter_id="gls:BIG", value=50.0 if s % 50 == 0 else 300.0 if s % 25 == 0 else 110.0, unit=Unit.MG_DL)
        for s in range(1, 251)
    ]
    writer.add_batch([dataclasses.replace(r, session_id=session_id) for r in readings])
    writer.finish("done")
    login(client, "nina")
    html = client.get(f"/nurse/session/{session_id}").get_data(as_text=True)
    assert len(re.findall(r'<tr class="band-', html)) == 50  # the newest page: readings 201-250
    assert "250 readings in this download: 5 low, 5 high. Showing 201 to 250." in html
    assert 'id="older-readings"' in html and 'id="newer-readings"' not in html
    first = client.get(f"/nurse/session/{session_id}?page=1").get_data(as_text=True)
    assert len(re.findall(r'<tr class="band-', first)) == 100 and "Showing 1 to 100." in first
    assert 'id="newer-readings"' in first and 'id="older-readings"' not in first
