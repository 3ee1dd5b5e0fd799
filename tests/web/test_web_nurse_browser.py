"""The nurse's pages in a real headless Chromium (issue 14, nurse items 6 and 7).

- The journey: an emulated OneTouch Ultra 2 on a real pty is plugged in before any patient is set; the real
  daemon (subprocess: hotplug, auto-sync, store, forwarder, pages) downloads it and forwards the readings without
  a patient over a real mosquitto to the reference receiver; the nurse, in Chromium, finds them under "Readings
  without a patient", types the patient id and presses Assign; the receiver ends with each reading once, under
  that patient. At 1280 and 390 px, in English and in Chinese (the page checks of browser_kit on the way).
- Every nurse page (desk with the unassigned list and a failed download, a finished download with the glucose
  picture, the visit sheet) at 1280 and 390 px in both languages: no horizontal scroll, axe-core clean, no
  English on the Chinese pages, every button inside the window on a phone; screenshots saved. The visit sheet
  prints on one A4 page (Chromium's print to PDF).

Waits are on conditions (the receiver's rows, the page's elements), never on the clock.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import browser_kit as kit
import pytest
from support.broker import MosquittoBroker, free_port, mosquitto_available, start_broker, start_receiver, wait_until
from support.daemon_proc import DaemonProcess, write_config
from support.factories import bp_reading
from web_harness import PASSWORD, add_users

from gateway.config import load_config
from gateway.emulate.platform import Receiver
from gateway.emulate.serial_meter import MeterState, SerialMeterEmulator, StoredReading
from gateway.records import ControlResult, CuffStatus, GlucoseReading, Meal, MeterInfo, Unit
from gateway.runtime import open_runtime
from gateway.store.blood_pressure import add_blood_pressure
from gateway.store.db import iso
from gateway.store.qc import insert_results
from gateway.store.readings import add_readings, upsert_meter
from gateway.store.sessions import record_failed

pytestmark = pytest.mark.browser

if not kit.CHROMIUM.exists():  # pragma: no cover - scripts/setup installs it
    pytest.skip("Debian chromium is not installed (scripts/setup installs it)", allow_module_level=True)
if not mosquitto_available():  # pragma: no cover
    pytest.skip("mosquitto is not installed (scripts/setup installs it)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")
pytest.importorskip("axe_playwright_python")

PATIENT = "330106-GLU-8812"
SEEDED = "330106-GLU-4410"
SEED_METER, SEED_UNASSIGNED = "serial:SEED01", "serial:SEED02"
VIEWS = [(lang, width) for lang in ("en", "zh") for width in kit.WIDTHS.values()]
PAGES = ("nurse-desk", "nurse-download", "nurse-sheet")
METER_VALUES = (95, 143, 212, 71, 188, 126)  # mg/dL as the meter measured them


@dataclass
class Gateway:
    url: str
    broker: MosquittoBroker
    receiver: Receiver
    links: dict[str, Path]


def _seed(config_path: Path) -> None:
    """Before the daemon starts: a patient seen 20 days ago with 40 readings since (the picture, GMI given), a
    download of today with them, a meter's QC test, two blood pressure readings of the visit, readings of another
    meter without a patient, a failed download."""
    runtime = open_runtime(load_config(config_path))
    add_users(runtime)
    store = runtime.store
    now = datetime.now(UTC)
    for meter_id in (SEED_METER, SEED_UNASSIGNED):
        upsert_meter(store, MeterInfo(meter_id=meter_id, family="lifescan", transport="serial",
                                      serial=meter_id.split(":")[1], model="OneTouch Ultra 2"))  # fmt: skip
    with store.transaction() as db:
        for session_id, patient, meter, started in (
            ("seed-visit", SEEDED, SEED_METER, now - timedelta(days=20)),
            ("seed-download", SEEDED, SEED_METER, now - timedelta(minutes=5)),
            ("seed-auto", None, SEED_UNASSIGNED, now - timedelta(minutes=3)),
        ):
            db.execute(
                "INSERT INTO sessions (session_id, kind, patient_id, meter_id, operator, state, started_at, ended_at, "
                "records_new) VALUES (?, 'meter', ?, ?, 'nina', 'done', ?, ?, 40)",
                [session_id, patient, meter, iso(started), iso(started + timedelta(seconds=20))],
            )

    def reading(meter: str, seq: int, when: datetime, mmol: float, patient: str | None, session: str) -> GlucoseReading:
        local = when.replace(tzinfo=None)
        return GlucoseReading(meter_id=meter, sequence=seq, meter_time=local, clock_offset_s=0.0, corrected_time=when,
                              time_trusted=True, value=mmol, unit=Unit.MMOL_L, patient_id=patient,
                              session_id=session, meal=Meal.BEFORE_MEAL if seq % 3 else None)  # fmt: skip

    pattern = (5.8, 7.4, 11.6, 3.4, 6.9, 9.8, 14.6, 8.1)
    start = now - timedelta(days=16)
    add_readings(store, [reading(SEED_METER, i + 1, start + timedelta(hours=9.6 * i), pattern[i % len(pattern)],
                                 SEEDED, "seed-download") for i in range(40)])  # fmt: skip
    add_readings(store, [reading(SEED_UNASSIGNED, i + 1, now - timedelta(hours=5 * i), 6.0 + i, None, "seed-auto")
                         for i in range(5)])  # fmt: skip
    with store.transaction() as db:
        control = reading(SEED_METER, 99, now - timedelta(days=2), 6.6, None, "seed-download").shared_fields()
        insert_results(db, store, [ControlResult(**control)])
    # The visit's blood pressure (issue 13): one above the programme target with the cuff's flag, one not.
    add_blood_pressure(store, [
        bp_reading(1, systolic=152, diastolic=94, patient_id=SEEDED, session_id="seed-download",
                   status=(CuffStatus.IRREGULAR_PULSE,)),
        bp_reading(2, systolic=131, diastolic=82, patient_id=SEEDED, session_id="seed-download"),
    ])  # fmt: skip
    record_failed(store, "meter", session_id="seed-failed", error="DeviceNotFound: meter SEED03 is not plugged in",
                  patient_id=SEEDED, operator="nina")  # fmt: skip
    store.close()


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("nurse")
    broker = start_broker(tmp / "broker")
    links = {f"{lang}-{width}": tmp / f"ttyMETER-{lang}-{width}" for lang, width in VIEWS}
    web_port = free_port()
    ports = ", ".join(f'"{link}"' for link in links.values())
    config = write_config(
        tmp / "gateway.toml", tmp / "state", web=True, web_port=web_port, broker_port=broker.port,
        extra=f"""
[meters.ble]
enabled = false

[meters.serial]
enabled = true
ports = [{ports}]
poll_interval_s = 0.1
auto_sync = true

[store]
low_disk_warn_mb = 0
min_free_mb = 0
""",
    )  # fmt: skip
    _seed(config)
    receiver = start_receiver(broker, tmp / "platform.db")
    try:
        with DaemonProcess(config, tmp) as daemon:
            daemon.wait_ready()
            wait_until(lambda: _answers(web_port), what="the daemon's pages")
            yield Gateway(f"http://127.0.0.1:{web_port}", broker, receiver, links)
    finally:
        receiver.stop()
        broker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with kit.launch() as chromium:
        yield chromium


def _nurse_page(browser: Any, gateway: Gateway, lang: str, width: int) -> Any:
    page = kit.open_page(browser, gateway.url, width=width, lang=lang)
    kit.login(page, "nina", PASSWORD)
    return page


def _buttons_inside(page: Any, width: int, name: str) -> None:
    """On a phone every action is reachable without scrolling sideways."""
    for box in page.locator("main button:visible, main a.button:visible").evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; })"
    ):
        assert box[0] >= 0 and box[1] <= width, f"{name}: an action sticks out: {box}"


@pytest.mark.parametrize(("lang", "width"), VIEWS, ids=[f"{lang}-{width}" for lang, width in VIEWS])
def test_nurse_assigns_auto_downloaded_readings_and_the_platform_files_each_once_under_the_patient(
    browser: Any, gateway: Gateway, lang: str, width: int
) -> None:
    expect = __import__("playwright.sync_api", fromlist=["expect"]).expect
    view = f"{lang}-{width}"
    meter = MeterState("onetouch_ultra2", seed=11 + VIEWS.index((lang, width)))  # a meter of its own per view
    now = meter.now()
    meter.readings = [StoredReading(now - timedelta(hours=6 * (len(METER_VALUES) - i)), v, Meal.BEFORE_MEAL)
                      for i, v in enumerate(METER_VALUES)]  # fmt: skip
    meter_id = f"onetouch_ultra2:{meter.serial}"
    patient = f"{PATIENT}-{view}"

    def platform_rows() -> list[dict[str, Any]]:
        return [r for r in gateway.receiver.readings() if r["meter_id"] == meter_id]

    emu = SerialMeterEmulator(meter, link=gateway.links[view])
    emu.start()  # plugged in before any patient is set: auto-sync downloads it at once
    page = _nurse_page(browser, gateway, lang, width)
    try:
        wait_until(lambda: len(platform_rows()) == len(METER_VALUES), what="the readings at the platform")
        assert {r["patient_id"] for r in platform_rows()} == {None}  # forwarded at once, without a patient

        row = page.locator(f"#unassigned-table tr[data-meter='{meter_id}']")

        def listed() -> bool:
            page.goto("/nurse")
            return bool(row.count() == 1)

        kit.wait_for(listed, what="the meter under 'Readings without a patient'")
        expect(row).to_contain_text(str(len(METER_VALUES)))
        kit.check_page(page, "nurse-unassigned-journey", lang=lang, width=width)
        _buttons_inside(page, width, "nurse desk")

        row.locator("input[name='patient_id']").fill(patient)
        row.locator("button[data-assign]").click()
        expect(page.locator(".flash.ok")).to_contain_text(patient)
        expect(page.locator(f"#unassigned-table tr[data-meter='{meter_id}']")).to_have_count(0)
        kit.check_page(page, "nurse-assigned-journey", lang=lang, width=width)

        wait_until(lambda: {r["patient_id"] for r in platform_rows()} == {patient}, what="the readings filed")
        rows = platform_rows()
        assert len(rows) == len(METER_VALUES) == len({r["reading_id"] for r in rows})  # each once
        assert sorted(r["doc"]["value"] for r in rows) == sorted(METER_VALUES)
        assert gateway.receiver.counts()["invalid"] == 0
    finally:
        page.context.close()
        emu.stop()


def _open(browser: Any, gateway: Gateway, name: str, lang: str, width: int) -> Any:
    page = _nurse_page(browser, gateway, lang, width)
    if name == "nurse-desk":
        page.goto("/nurse")
        page.locator("#patient_id").fill(SEEDED)
        page.locator("#set-patient").click()
        page.locator("#meters-table").wait_for()
    elif name == "nurse-download":
        page.goto("/nurse/session/seed-download")
        page.locator("#glucose-chart").wait_for()
    elif name == "nurse-sheet":
        page.goto("/nurse/session/seed-download/sheet")
        page.locator("#visit-sheet").wait_for()
    return page


@pytest.mark.parametrize(("lang", "width"), VIEWS, ids=[f"{lang}-{width}" for lang, width in VIEWS])
def test_every_nurse_page_fits_is_accessible_and_speaks_the_language(
    browser: Any, gateway: Gateway, lang: str, width: int
) -> None:
    expect = __import__("playwright.sync_api", fromlist=["expect"]).expect
    for name in PAGES:
        page = _open(browser, gateway, name, lang, width)
        try:
            kit.check_page(page, name, lang=lang, width=width)
            if width == kit.WIDTHS["phone"]:
                _buttons_inside(page, width, name)
            if name == "nurse-desk":
                expect(page.locator("#unassigned-table")).to_contain_text(SEED_UNASSIGNED)
                failed = page.locator("#sessions-table tr.state-failed")
                expect(failed).to_have_count(1)
                assert "DeviceNotFound" not in failed.inner_text()
            if name == "nurse-download":
                expect(page.locator("#sum-count")).to_have_text("40")
                expect(page.locator("#sum-gmi")).to_contain_text("%")  # 16 days, 40 readings: GMI given
        finally:
            page.context.close()


def test_screenshots_of_every_nurse_page_were_saved() -> None:
    names = {p.name for p in kit.SHOTS.glob("*.png")}
    expected = {f"{page}-{lang}-{width}.png" for page in PAGES for lang, width in VIEWS}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_visit_sheet_prints_on_one_page(browser: Any, gateway: Gateway, lang: str) -> None:
    """A normal visit (40 readings over 16 days, the chart, the summary, QC, the visit's blood pressure) prints on
    one A4 page: Chromium's own print to PDF, with the sheet's print CSS."""
    page = _open(browser, gateway, "nurse-sheet", lang, kit.WIDTHS["desktop"])
    try:
        page.emulate_media(media="print")
        assert not page.locator("header.top").is_visible() and not page.locator("#print-sheet").is_visible()
        # The visit's blood pressure prints with it: the reading above target and the cuff's flag marked in words.
        assert page.locator("#visit-bp #bp-table tbody tr").count() == 2
        assert page.locator("#visit-bp tr.band-high .tag.high").first.is_visible()
        assert page.locator('#visit-bp [data-status="irregular_pulse"]').is_visible()
        kit.screenshot(page, f"nurse-sheet-print-{lang}")
        pdf = page.pdf(prefer_css_page_size=True)
        pages = len(re.findall(rb"/Type\s*/Page(?!s)", pdf))
        (kit.SHOTS / f"nurse-sheet-print-{lang}.pdf").write_bytes(pdf)
        assert pages == 1, f"the visit sheet prints on {pages} pages"
    finally:
        page.context.close()
