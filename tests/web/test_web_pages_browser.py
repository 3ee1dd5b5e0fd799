"""The IT status page, the referral inbox, the login and error pages in a real headless Chromium, at 1280 and
390 px, in English and Chinese: each page fits the width, passes axe-core, shows no English when Chinese,
and is saved as a screenshot (test-artifacts/screenshots/). And the journey IT cares about: the badge and
``/healthz`` turn red within ``health.broker_down_s`` of the real mosquitto stopping, and green when it is back.

One gateway for the module: a real mosquitto, the real forwarder, health monitor and web component on an
asyncio core thread, a real store. One browser for the module (browser_kit.launch).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import browser_kit as kit
import pytest
from support.broker import MosquittoBroker, mosquitto_available, start_broker
from web_harness import PASSWORD, CoreThread, RetinaStub, add_users, make_config

from gateway.clock import SystemClock, clinic_time
from gateway.forward.forwarder import Forwarder
from gateway.health import HealthMonitor
from gateway.records import MeterInfo, Referral
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store.db import iso
from gateway.store.events import add_event
from gateway.store.readings import upsert_meter
from gateway.store.referrals import add_referral
from gateway.store.sessions import start_session
from gateway.web.component import WebServer

pytestmark = pytest.mark.browser

if not kit.CHROMIUM.exists():  # pragma: no cover - scripts/setup installs it
    pytest.skip("Debian chromium is not installed (scripts/setup installs it)", allow_module_level=True)
if not mosquitto_available():  # pragma: no cover
    pytest.skip("mosquitto is not installed (scripts/setup installs it)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")
pytest.importorskip("axe_playwright_python")

PATIENT = "330106-RET-5520"
BROKER_DOWN_S = 2.0
PAGES = ("login", "error-403", "error-404", "status", "referrals")
VIEWS = [(lang, width) for lang in ("en", "zh") for width in kit.WIDTHS.values()]


@dataclass
class Gateway:
    url: str
    runtime: Runtime
    broker: MosquittoBroker
    forwarder: Forwarder
    web: WebServer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("pages")
    broker = start_broker(tmp / "broker")
    config = make_config(
        tmp / "state",
        forward={"host": "127.0.0.1", "port": broker.port, "reconnect_probe_s": 0.2, "backoff_max_s": 2},
        health={"broker_down_s": BROKER_DOWN_S},
        store={"low_disk_warn_mb": 0, "min_free_mb": 0},  # the test machine's free space is not under test
        web={"login_attempts_per_minute": 200, "login_attempts_per_address_per_minute": 400},
    )
    runtime = open_runtime(config, clock=SystemClock("assume_synced"))
    add_users(runtime)
    _seed(runtime)
    forwarder = Forwarder(config, runtime.store, runtime.clock)
    monitor = HealthMonitor.from_runtime(runtime)
    web = WebServer(runtime, GatewayServices(runtime))
    runtime.components.extend([forwarder, monitor, web])
    core = CoreThread(runtime)
    for component in (forwarder, monitor, web):
        core.start(component.run)
    assert web.started.wait(10) and web.app is not None
    web.app.config["CG_STATUS_REFRESH_S"] = 1
    try:
        kit.wait_for(lambda: forwarder.state == "online", what="the forwarder online")
        yield Gateway(f"http://127.0.0.1:{web.port}", runtime, broker, forwarder, web)
    finally:
        core.stop()
        broker.stop()
        runtime.store.close()


def _seed(runtime: Runtime) -> None:
    """What a clinic's gateway has after a morning: a meter, an event, queue samples with a recent backlog, and
    three referral decisions (new, held for an unknown patient, acknowledged)."""
    store = runtime.store
    upsert_meter(store, MeterInfo(meter_id="serial:TM0042", family="lifescan", transport="serial", serial="TM0042",
                                  model="OneTouch Ultra 2"))  # fmt: skip
    add_event(store, "disk_low", "free space is low", level="warning", detail={"free_mb": 900})
    _seed_queue(runtime)
    start_session(store, "retina", patient_id=PATIENT, operator="tom")
    add_referral(
        store,
        Referral(
            referral_id="ref-new",
            decision="refer_routine",
            patient_id=PATIENT,
            grader="Dr Wang",
            note="Moderate NPDR, left eye.",
        ),
    )
    add_referral(store, Referral(referral_id="ref-held", decision="refer_urgent", patient_id="999-NEVER-SEEN"))
    add_referral(store, Referral(referral_id="ref-done", decision="no_dr", patient_id=PATIENT, grader="Dr Li"))
    GatewayServices(runtime).acknowledge_referral("ref-done", "tom")  # fmt: skip


def _seed_queue(runtime: Runtime) -> None:
    """Queue samples over the last 6 minutes: a backlog that builds and drains (what the chart must show).
    Relative to now: a test that checks the chart's window seeds them again just before (the window the
    server picks grows as the samples age)."""
    now = datetime.now(UTC)
    with runtime.store.transaction() as db:
        db.execute("DELETE FROM web_queue_samples")
        for i in range(12):
            db.execute(
                "INSERT INTO web_queue_samples (at, unsent, parked, acked_total) VALUES (?, ?, 0, ?)",
                [iso(now - timedelta(seconds=30 * (12 - i))), [0, 4, 9, 15, 22, 18, 12, 7, 3, 1, 0, 0][i], i * 5],
            )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with kit.launch() as chromium:
        yield chromium


def _healthz(gateway: Gateway) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(gateway.url + "/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _open(browser: Any, gateway: Gateway, name: str, lang: str, width: int) -> Any:
    """The page ``name`` as its user sees it, ready to be checked."""
    page = kit.open_page(browser, gateway.url, width=width, lang=lang)
    if name == "login":
        page.goto("/login")
    elif name == "error-403":
        kit.login(page, "nina", PASSWORD)
        page.goto("/status")
    elif name == "error-404":
        kit.login(page, "nina", PASSWORD)
        page.goto("/no/such/page")
    elif name == "status":
        kit.login(page, "ada", PASSWORD)
        page.goto("/status")
        page.locator("#overall[data-level]").wait_for()
        page.locator("#queue-chart svg").wait_for()
    elif name == "referrals":
        kit.login(page, "tom", PASSWORD)
        page.goto("/referrals")
    return page


@pytest.mark.parametrize(("lang", "width"), VIEWS, ids=[f"{lang}-{width}" for lang, width in VIEWS])
def test_every_page_fits_is_accessible_and_speaks_the_language(
    browser: Any, gateway: Gateway, lang: str, width: int
) -> None:
    """Issue 14: status, referrals, login and error pages at 1280 and 390 px in both languages: no horizontal
    scroll (the status page was 780-880 px wide on a phone), axe-core clean (the "New" badge and the header
    subtitle failed contrast), no English on the Chinese pages; screenshots saved."""
    for name in PAGES:
        page = _open(browser, gateway, name, lang, width)
        try:
            kit.check_page(page, name, lang=lang, width=width)
            if width == kit.WIDTHS["phone"]:
                # Every action is reachable without scrolling sideways: each button lies inside the window.
                for box in page.locator("main button:visible").evaluate_all(
                    "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; })"
                ):
                    assert box[0] >= 0 and box[1] <= width, f"{name}: a button sticks out: {box}"
        finally:
            page.context.close()


def test_status_page_shows_the_truth(browser: Any, gateway: Gateway) -> None:
    """Issue 14: the model row printed raw JSON (it read ``version``; the API sends ``model_version``), the
    drain rate said "none messages/min" when idle, the disk was "79692.5 MB / 258019.6 MB", the 6-hour chart
    made a 6-minute backlog a sliver, and times were in the browser's zone, unlabelled."""
    _seed_queue(gateway.runtime)
    page = _open(browser, gateway, "status", "en", 1280)
    try:
        expect = __import__("playwright.sync_api", fromlist=["expect"]).expect
        expect(page.locator("#disk-free")).to_contain_text(" GB free of ")
        assert "MB /" not in page.locator("#disk-free").inner_text()
        expect(page.locator("#disk-bar")).to_be_attached()
        expect(page.locator("#drain-rate")).not_to_contain_text("none")
        # The chart shows the recent activity: the window the server chose is the 15-minute one (the backlog
        # began 6 minutes ago; this holds unless opening the page took more than 7 minutes).
        expect(page.locator(".chart-windows button[data-window='']")).to_have_attribute("aria-pressed", "true")
        # The document and the text it rendered, read in one script turn (a refresh in between could cross a minute).
        doc, shown = page.evaluate(
            "() => [window.CGStatus.last(), document.querySelector(\"[data-field='gateway.now']\").textContent]"
        )
        assert doc["queue"]["window_hours"] == 0.25
        # Times: the clinic's zone, labelled, the same text as the server's helper writes.
        assert shown.strip() == clinic_time(doc["gateway"]["now"], ZoneInfo("Asia/Shanghai"))
        expect(page.locator("#errors-table")).to_contain_text("Free disk space is low")
    finally:
        page.context.close()


def test_model_row_reads_the_field_the_api_sends(browser: Any, gateway: Gateway) -> None:
    """The retina component reports ``model_version`` and ``thresholds``: the row shows both, readably."""
    holder = RetinaStub(
        {
            "model_version": "referable-dr-lite0-2026.11.0",
            "file": "referable_dr.onnx",
            "input_size": 256,
            "thresholds": {"refer": 0.197, "high_specificity": 0.3207},
        }
    )
    gateway.runtime.components.append(holder)
    page = _open(browser, gateway, "status", "zh", 390)
    try:
        expect = __import__("playwright.sync_api", fromlist=["expect"]).expect
        expect(page.locator("#model-version")).to_have_text("referable-dr-lite0-2026.11.0")
        expect(page.locator("#model-detail")).to_contain_text("转诊阈值 0.20")
        assert "{" not in page.locator("#model-row").inner_text()
        kit.assert_fits_width(page)
        # Durations in the page's language ("2m 16s" was left in English): CG.duration and the uptime field.
        assert page.evaluate("() => window.CG.duration(136)") == "2分16秒"
        assert page.evaluate("() => window.CG.duration(7500)") == "2小时5分"
        uptime = page.locator("[data-field='gateway.uptime_s']").inner_text()
        assert re.fullmatch(r"\d+(天|小时|分|秒)(\d+(小时|分|秒))?", uptime), uptime
    finally:
        page.context.close()
        gateway.runtime.components.remove(holder)


def test_js_and_python_write_the_same_clinic_time(browser: Any, gateway: Gateway) -> None:
    """One time convention: ``CG.time`` (every page script) and ``clinic_time`` (templates, commands) agree,
    across zones and daylight saving."""
    page = _open(browser, gateway, "login", "en", 1280)
    try:
        moments = [
            "2026-11-23T02:40:00+00:00",
            "2026-07-01T23:59:30Z",
            "2026-03-29T00:30:00+00:00",
            "2026-11-01T05:30:00+00:00",
        ]
        for zone in ("Asia/Shanghai", "Europe/Berlin", "America/St_Johns", "UTC", "Asia/Kolkata"):
            for moment in moments:
                js = page.evaluate("([iso, tz]) => window.CG.time(iso, {tz: tz})", [moment, zone])
                assert js == clinic_time(moment, ZoneInfo(zone)), (zone, moment)
        assert page.evaluate("() => window.CG.time('2026-11-23T02:40:00Z', {date: false})") == "10:40 UTC+8"
    finally:
        page.context.close()


def test_badge_and_healthz_turn_red_when_the_broker_stops_and_green_when_it_returns(
    browser: Any, gateway: Gateway
) -> None:
    """Issue 14: badge and /healthz stayed green "healthy" through a 4-minute broker outage, and "Recent errors"
    said "none" while the link's last error held it. Waits on the page's own state, never on the clock."""
    expect = __import__("playwright.sync_api", fromlist=["expect"]).expect
    page = _open(browser, gateway, "status", "en", 390)
    try:
        badge = page.locator("#overall")
        expect(badge).to_have_attribute("data-level", "green", timeout=20_000)
        assert _healthz(gateway)[0] == 200
        gateway.broker.stop()
        # amber at once (link down), red once it has been down longer than health.broker_down_s
        expect(badge).to_have_attribute("data-level", "red", timeout=30_000)
        expect(page.locator("#health-problems li[data-problem='broker_down']")).to_contain_text(
            "No link to the hospital"
        )
        expect(page.locator("#errors-table")).to_contain_text("The link to the hospital's broker failed")
        expect(page.locator("#drain-rate")).to_have_attribute("data-state", "offline")
        status, doc = _healthz(gateway)
        assert status == 503 and doc["level"] == "red"
        assert [p["kind"] for p in doc["problems"]] == ["broker_down"]
        assert doc["problems"][0]["value"] >= BROKER_DOWN_S
        kit.screenshot(page, "status-broker-down-en-390")
        # The same outage on a Chinese phone: link states, the problem, the link's error, the drain rate.
        zh = _open(browser, gateway, "status", "zh", 390)
        try:
            expect(zh.locator("#overall")).to_have_attribute("data-level", "red")
            expect(zh.locator("#errors-table tbody tr")).not_to_have_count(0)
            kit.check_page(zh, "status-broker-down", lang="zh", width=390)
        finally:
            zh.context.close()
        gateway.broker.start()
        expect(badge).to_have_attribute("data-level", "green", timeout=30_000)
        kit.wait_for(lambda: _healthz(gateway)[0] == 200, what="/healthz 200 again")
    finally:
        page.context.close()
        if not gateway.broker.running:
            gateway.broker.start()


def test_the_page_itself_turns_red_when_the_gateway_stops_answering(browser: Any, gateway: Gateway) -> None:
    """Issue 14: after the daemon stopped answering the badge stayed green. The page notices on its own: no
    good refresh for ``health.page_stale_s`` -> red, "No answer from the gateway since ..."."""
    expect = __import__("playwright.sync_api", fromlist=["expect"]).expect
    app = gateway.web.app
    assert app is not None
    app.config["CG_STATUS_STALE_S"] = 3  # health.page_stale_s, shortened for the test
    page = _open(browser, gateway, "status", "zh", 1280)
    try:
        expect(page.locator("#overall")).to_have_attribute("data-level", "green", timeout=20_000)
        page.route("**/api/status*", lambda route: route.abort())  # the gateway no longer answers
        expect(page.locator("#refresh-state")).to_be_visible(timeout=30_000)
        expect(page.locator("#refresh-state")).to_contain_text("网关没有应答")
        expect(page.locator("#overall")).to_have_attribute("data-level", "red")
        kit.assert_no_english(page)
        kit.screenshot(page, "status-stale-zh-1280")
    finally:
        page.context.close()
        app.config.pop("CG_STATUS_STALE_S", None)


def test_screenshots_of_every_page_were_saved() -> None:
    names = {p.name for p in kit.SHOTS.glob("*.png")}
    expected = {f"{page}-{lang}-{width}.png" for page in PAGES for lang, width in VIEWS}
    assert expected <= names, sorted(expected - names)


def test_walker_catches_english_and_lets_ids_pass(browser: Any, gateway: Gateway) -> None:
    """The walker's rule (browser_kit.english_words) on a page made to leak: it must fail, or it checks nothing."""
    page = _open(browser, gateway, "login", "zh", 390)
    try:
        assert kit.english_words(page) == []
        page.evaluate(
            "document.querySelector('main').insertAdjacentHTML('beforeend', "
            "'<p>网关 unreachable 330106-GLU-8812 serial:TM0042 74.2 GB UTC+8 DeviceNotFound 2m 16s</p>"
            '<p translate="no">Dr Wang</p>\')'
        )
        leaked = " ".join(kit.english_words(page))
        assert "'unreachable'" in leaked and "'DeviceNotFound'" in leaked and "'2m'" in leaked and "'16s'" in leaked
        for fine in ("330106", "serial", "GB", "UTC", "Wang"):
            assert f"'{fine}'" not in leaked
    finally:
        page.context.close()
