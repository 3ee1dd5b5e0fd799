"""User journeys in a real headless Chromium (Debian package) against the pages served by waitress.

The gateway side is real: the web component (waitress in a thread, as in the daemon), the retina service
with the emulated camera (a video file through OpenCV), and real meter downloads (DownloadSession over a
scripted meter) answering DeskBus requests on an asyncio core thread. Screenshots go to
``test-artifacts/screenshots/`` for review.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from browser_kit import CHROMIUM, CHROMIUM_ARGS, SHOTS
from support import degrade
from web_harness import PASSWORD, CoreThread, ScriptedMeter, add_users, make_config, scripted_records, serve_meter_sync

from gateway.clock import SystemClock
from gateway.desk import SerialSyncRequest
from gateway.emulate import camera as emulated_camera
from gateway.logs import PhiFilter, TextFormatter
from gateway.records import MeterInfo, Referral
from gateway.retina.service import RetinaService
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store.db import iso, new_id
from gateway.store.readings import upsert_meter
from gateway.store.referrals import add_referral, count_unseen
from gateway.web.component import WebServer

pytestmark = pytest.mark.browser

METER = "serial:TM0042"
NURSE_PATIENT = "330106-GLU-8812"
TECH_PATIENT = "330106-RET-5520"

if not CHROMIUM.exists():  # pragma: no cover - scripts/setup installs it
    pytest.skip("Debian chromium is not installed (scripts/setup installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class Gateway:
    """The running pages and what they talk to."""

    url: str
    runtime: Runtime
    web: WebServer
    logs: list[str]


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.setFormatter(TextFormatter())
        self.addFilter(PhiFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(self.format(record))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("browser")
    video = emulated_camera.write_video(tmp / "camera.avi", emulated_camera.frames(24, size=(640, 480), seed=5))
    config = make_config(
        tmp / "state",
        retina={"camera": {"enabled": True, "device": str(video), "width": 640, "height": 480, "loop": True,
                           "preview_fps": 5}},
    )  # fmt: skip
    runtime = open_runtime(config, clock=SystemClock("assume_synced"))
    add_users(runtime)
    upsert_meter(runtime.store, MeterInfo(meter_id=METER, family="scripted", transport="serial", serial="TM0042",
                                          model="Test Meter 1"))  # fmt: skip
    _chart_samples(runtime)
    logs: list[str] = []
    handler = _Collect(logs)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    services = GatewayServices(runtime)
    retina = RetinaService(runtime, load=False)
    web = WebServer(runtime, services)
    runtime.components.extend([retina, web])
    core = CoreThread(runtime)
    for request_type in (SerialSyncRequest, *RetinaService.serves):
        runtime.desk.queue(request_type)
    core.start(lambda: serve_meter_sync(runtime, lambda target: ScriptedMeter(target, scripted_records(), 0.25)))
    core.start(retina.run)
    core.start(web.run)
    assert web.started.wait(10), "web component did not start"
    assert web.app is not None
    web.app.config["CG_STATUS_REFRESH_S"] = 1
    web.app.config["CG_REFERRAL_REFRESH_S"] = 1  # the navigation badge asks every second
    try:
        yield Gateway(url=f"http://127.0.0.1:{web.port}", runtime=runtime, web=web, logs=logs)
    finally:
        core.stop()
        root.removeHandler(handler)
        root.setLevel(old_level)
        runtime.store.close()


def _chart_samples(runtime: Runtime) -> None:
    """Three hours of queue samples: a backlog that builds during an outage and drains."""
    now = datetime.now(UTC)
    with runtime.store.transaction() as db:
        for i in range(36):
            depth = max(0, 40 - abs(i - 20) * 3) if 10 <= i <= 34 else 0
            at = now - timedelta(minutes=5 * (36 - i))
            db.execute("INSERT INTO web_queue_samples (at, unsent, parked, acked_total) VALUES (?, ?, 0, ?)",
                       [iso(at), depth, i * 3])  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, gateway: Gateway) -> Iterator[object]:
    context = browser.new_context(base_url=gateway.url, viewport={"width": 1200, "height": 900},  # type: ignore[attr-defined]
                                  locale="en-GB")  # fmt: skip
    context.set_default_timeout(10_000)
    pg = context.new_page()
    yield pg
    context.close()


def _shot(page: object, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def _login(page: object, user: str, password: str = PASSWORD) -> None:
    page.goto("/login")  # type: ignore[attr-defined]
    page.fill("#username", user)  # type: ignore[attr-defined]
    page.fill("#password", password)  # type: ignore[attr-defined]
    page.click("#login")  # type: ignore[attr-defined]


def _wait_for_preview(page: object, timeout_s: float = 10.0) -> None:
    # (wait_for_function evaluates a string, which the pages' CSP rightly forbids.)
    preview = page.locator("#preview")  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while preview.evaluate("img => img.naturalWidth") == 0:
        assert time.monotonic() < deadline, "the camera preview showed no frame"
        time.sleep(0.1)


def _scan(page: object, patient_id: str) -> None:
    """A barcode scanner types the id and presses Enter."""
    page.click("#patient_id")  # type: ignore[attr-defined]
    page.keyboard.type(patient_id, delay=5)  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]


def test_refused_without_login_and_with_the_wrong_role(page: object, gateway: Gateway) -> None:
    expect = sync_api.expect
    for path in ("/nurse", "/technician", "/status"):
        page.goto(path)  # type: ignore[attr-defined]
        expect(page).to_have_url(re.compile(re.escape(f"{gateway.url}/login?next=")))
    _shot(page, "01-login")
    _login(page, "nina", "not her password")
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    _login(page, "tom")
    expect(page.locator("h1")).to_have_text("Retinal photos")
    page.goto("/status")  # type: ignore[attr-defined]
    expect(page.locator("#error-message")).to_have_text("Your role may not open this page.")
    _shot(page, "02-wrong-role")
    assert NURSE_PATIENT not in page.content()  # type: ignore[attr-defined]


def test_csrf_refusal(page: object) -> None:
    expect = sync_api.expect
    _login(page, "nina")
    page.fill("#patient_id", NURSE_PATIENT)  # type: ignore[attr-defined]
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => { e.value = 'forged'; })")  # type: ignore[attr-defined]
    page.click("#set-patient")  # type: ignore[attr-defined]
    expect(page.locator("#error-message")).to_contain_text("did not come from this gateway")
    _shot(page, "03-csrf-refused")
    assert NURSE_PATIENT not in page.content()  # type: ignore[attr-defined]


def test_status_page_refreshes_and_charts(page: object, gateway: Gateway) -> None:
    expect = sync_api.expect
    _login(page, "ivy")
    expect(page.locator("h1")).to_contain_text("Gateway status")
    expect(page.locator("[data-field='gateway.site_id']")).to_have_text("chc-test")
    expect(page.locator("#queue-chart svg polyline")).to_have_count(1)
    expect(page.locator("#devices-table tbody")).to_contain_text(METER)
    expect(page.locator("#components-table tbody")).to_contain_text("retinal photos")
    before = page.locator("[data-field='gateway.uptime_s']").inner_text()  # type: ignore[attr-defined]
    # The page refreshes itself: the server's uptime moves on without a reload.
    expect(page.locator("[data-field='gateway.uptime_s']")).not_to_have_text(before, timeout=5000)
    _shot(page, "04-status")


def _nurse_journey(page: object) -> None:
    expect = sync_api.expect
    _login(page, "nina")
    _scan(page, NURSE_PATIENT)
    expect(page.locator("#current-patient")).to_have_text(NURSE_PATIENT)
    _shot(page, "05-nurse-meters")
    page.click(f"button[data-meter='{METER}']")  # type: ignore[attr-defined]
    # Progress n of N while the meter sends its records.
    expect(page.locator("#progress-text")).to_contain_text("of 6")
    _shot(page, "06-nurse-progress")
    expect(page.locator("#session-state")).to_contain_text("finished", timeout=15000)
    rows = page.locator("#readings-table tbody tr")  # type: ignore[attr-defined]
    expect(rows).to_have_count(6)
    expect(page.locator("tr.band-low")).to_have_count(1)
    expect(page.locator("tr.band-high")).to_have_count(1)
    expect(page.locator("tr.band-low .tag")).to_have_text("Low")
    expect(page.locator("tr.band-high")).to_contain_text("15.1")
    expect(page.locator("#readings-table")).to_contain_text("after meal")
    _shot(page, "07-nurse-readings")
    page.set_viewport_size({"width": 800, "height": 1100})  # type: ignore[attr-defined]
    _shot(page, "07b-nurse-readings-tablet")
    page.set_viewport_size({"width": 1200, "height": 900})  # type: ignore[attr-defined]
    page.click("#confirm-link")  # type: ignore[attr-defined]
    expect(page.locator(".flash.ok")).to_have_text("Meter linked to this patient.")
    page.click("#next-patient")  # type: ignore[attr-defined]
    expect(page.locator("#sessions-table")).to_contain_text(NURSE_PATIENT)
    assert NURSE_PATIENT not in page.url  # type: ignore[attr-defined]


def _technician_journey(page: object) -> None:
    expect = sync_api.expect
    _login(page, "tom")
    _scan(page, TECH_PATIENT)
    expect(page.locator("#session-patient")).to_have_text(TECH_PATIENT)
    # The live preview shows frames from the emulated camera.
    _wait_for_preview(page)
    page.check("input[name=eye][value=L]")  # type: ignore[attr-defined]
    page.check("input[name=field][value=disc]")  # type: ignore[attr-defined]
    _shot(page, "08-technician-preview")
    page.click("#capture")  # type: ignore[attr-defined]
    expect(page.locator("#quality-verdict")).to_be_visible(timeout=15000)
    expect(page.locator("#triage h3")).to_contain_text("advisory only, not a diagnosis")
    _wait_for_preview(page)
    _shot(page, "09-technician-verdict")
    # A photo file that is too dark: the verdict says why, and the retake button takes a new one.
    dark = degrade.degrade("underexposed", emulated_camera.synthetic_fundus(11, eye="L"), seed=3)
    page.set_input_files(  # type: ignore[attr-defined]
        "#photo", files=[{"name": "dark.jpg", "mimeType": "image/jpeg", "buffer": emulated_camera.encode(dark)}]
    )
    page.click("#upload")  # type: ignore[attr-defined]
    expect(page.locator("#quality-verdict")).to_contain_text("not gradable", timeout=15000)
    expect(page.locator("#quality-reasons li[data-reason=too_dark]")).to_contain_text("Too dark")
    _wait_for_preview(page)
    _shot(page, "10-technician-too-dark")
    # Retake repeats the way the photo came: after an upload it asks for a file (it never fires the camera).
    expect(page.locator("#retake-box")).to_have_attribute("data-source", "upload")
    good = emulated_camera.encode(emulated_camera.synthetic_fundus(11, eye="L"))
    page.set_input_files(  # type: ignore[attr-defined]
        "#retake-photo", files=[{"name": "again.jpg", "mimeType": "image/jpeg", "buffer": good}]
    )
    before = page.url  # type: ignore[attr-defined]
    page.click("#retake")  # type: ignore[attr-defined]
    page.wait_for_url(lambda url: url != before)  # type: ignore[attr-defined]
    expect(page.locator("#quality-verdict")).to_be_visible(timeout=15000)
    expect(page.locator("#gallery figure.photo")).to_have_count(3)
    # The dark upload is greyed and marked as replaced by its retake (the newest, first in the gallery).
    expect(page.locator("#gallery figure.photo").first).not_to_have_class(re.compile("superseded"))
    expect(page.locator("#gallery figure.photo.superseded .replaced").first).to_be_visible()
    expect(page.locator("#gallery")).not_to_contain_text("Right (OD)")
    _wait_for_preview(page)
    _shot(page, "11-technician-retake")
    assert TECH_PATIENT not in page.url  # type: ignore[attr-defined]


def _referral_step(page: object, gateway: Gateway) -> None:
    """The grader's decision on the technician's first photo comes back while the page is open: the badge
    shows it, the inbox lists it with the photo's patient and eye, and acknowledging it clears it."""
    expect = sync_api.expect
    store = gateway.runtime.store
    capture_id = store.scalar(
        "SELECT capture_id FROM captures WHERE patient_id = ? ORDER BY rowid LIMIT 1", [TECH_PATIENT]
    )
    assert capture_id, "the technician journey stored no photo"
    unseen = count_unseen(store)
    referral = Referral(referral_id=new_id(), decision="refer_routine", capture_id=capture_id, grader="Dr Wang",
                        note="Moderate NPDR, left eye. Book the eye clinic within 4 weeks.")  # fmt: skip
    # Stored as the forwarder stores a cmd/referral downlink (this harness runs no broker).
    assert add_referral(store, referral)
    badge = page.locator("#referral-badge")  # type: ignore[attr-defined]
    expect(badge).to_be_visible()
    expect(badge).to_have_text(str(unseen + 1))
    page.click("#nav-referrals")  # type: ignore[attr-defined]
    row = page.locator(f"tr[data-referral='{referral.referral_id}']")  # type: ignore[attr-defined]
    expect(row).to_have_class("unseen")
    for text in (TECH_PATIENT, "Left (OS)", "Disc-centred", "Refer (routine)", "Dr Wang", "within 4 weeks"):
        expect(row).to_contain_text(text)
    _shot(page, "13-referral-inbox")
    page.click(f"button[data-acknowledge='{referral.referral_id}']")  # type: ignore[attr-defined]
    expect(page.locator(".flash.ok")).to_have_text("Decision acknowledged.")
    expect(row).to_have_class("seen")
    expect(row).to_contain_text("Acknowledged")
    if unseen:
        expect(badge).to_have_text(str(unseen))
    else:
        expect(badge).to_be_hidden()
    _shot(page, "14-referral-acknowledged")
    assert count_unseen(store) == unseen
    assert TECH_PATIENT not in page.url  # type: ignore[attr-defined]


def test_language_switch(page: object, gateway: Gateway) -> None:
    expect = sync_api.expect
    page.goto("/login")  # type: ignore[attr-defined]
    page.click("button[name=lang][value=zh]")  # type: ignore[attr-defined]
    expect(page.locator("h1")).to_have_text("登录")
    _login(page, "ada")
    expect(page.locator("h1")).to_contain_text("网关状态")
    page.goto("/nurse")  # type: ignore[attr-defined]
    expect(page.locator("h1")).to_have_text("血糖仪数据下载")
    _shot(page, "12-nurse-zh")
    page.click("button[name=lang][value=en]")  # type: ignore[attr-defined]
    expect(page.locator("h1")).to_have_text("Glucose meter download")


def test_desk_journeys_log_no_patient_id(page: object, browser: object, gateway: Gateway) -> None:
    """Nurse download, technician capture/retake and a referral decision acknowledged, end to end; their logs
    must not carry the patient ids."""
    gateway.logs.clear()
    _nurse_journey(page)
    page.click("#logout")  # type: ignore[attr-defined]
    _technician_journey(page)
    _referral_step(page, gateway)
    logs = "\n".join(gateway.logs)
    assert "download" in logs and "retina" in logs, "the journeys left no logs: nothing was checked"
    assert "acknowledged referral" in logs
    for patient_id in (NURSE_PATIENT, TECH_PATIENT):
        assert patient_id not in logs


def test_screenshots_were_saved() -> None:
    names = sorted(p.name for p in SHOTS.glob("*.png"))
    assert {"04-status.png", "07-nurse-readings.png", "09-technician-verdict.png", "13-referral-inbox.png"} <= set(
        names
    )
