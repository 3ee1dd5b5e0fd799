"""The technician's pages in a real headless Chromium (browser_kit), at 1280 and 390 px, in English and Chinese:
the start page with today's visits, and a visit with a rejected photo just taken (thumbnail with the quality
gate's marks over it, the gallery with a superseded shot, refer and rescreen, queued for the hospital). Each
fits the width, passes axe-core, shows no English when Chinese, and is saved as a screenshot.

And the issue's journey: the technician uploads a photo that is too dark and, pushed to the page as soon as the
real quality gate has judged it, sees its thumbnail with the dark region and the field circle drawn over it;
a click enlarges it with the same marks. The gateway side is real: the web component (waitress), the retina
service with the real quality gate on an asyncio core thread, a real store. The photos are generated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import browser_kit as kit
import pytest
from support import degrade
from support.factories import store_triaged_photo
from web_harness import PASSWORD, add_users, make_config, retina_core

from gateway.clock import SystemClock
from gateway.emulate import camera as emulated_camera
from gateway.records import Field, TriageDecision
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.web.component import WebServer
from gateway.web.push import stream_slots

pytestmark = pytest.mark.browser

if not kit.CHROMIUM.exists():  # pragma: no cover - scripts/setup installs it
    pytest.skip("Debian chromium is not installed (scripts/setup installs it)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")
pytest.importorskip("axe_playwright_python")

PATIENT = "330106-RET-6402"
VIEWS = [(lang, width) for lang in ("en", "zh") for width in kit.WIDTHS.values()]
PAGES = ("technician", "technician-visit")


@dataclass
class Gateway:
    url: str
    runtime: Runtime
    visit: str
    """The seeded visit's session id."""
    web: WebServer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("technician")
    config = make_config(
        tmp / "state",
        store={"low_disk_warn_mb": 0, "min_free_mb": 0},
        web={"login_attempts_per_minute": 200, "login_attempts_per_address_per_minute": 400},
    )
    runtime = open_runtime(config, clock=SystemClock("assume_synced"))
    add_users(runtime)
    services = GatewayServices(runtime)
    visit = services.start_retina_session(PATIENT, operator="tom")
    web = WebServer(runtime, services)
    runtime.components.append(web)
    # Two gradable photos with the model's advisory decisions: refer and rescreen side by side.
    for seed, decision, field in ((1, TriageDecision.REFER, Field.DISC), (2, TriageDecision.RESCREEN, Field.MACULA)):
        image = emulated_camera.encode(emulated_camera.synthetic_fundus(seed, eye="R"))
        store_triaged_photo(runtime.store, image, patient_id=PATIENT, session_id=visit, decision=decision, field=field)
    try:
        with retina_core(runtime) as core:  # the real quality gate; no camera: photos are uploaded
            core.start(web.run)
            assert web.started.wait(10), "web component did not start"
            yield Gateway(f"http://127.0.0.1:{web.port}", runtime, visit, web)
    finally:
        runtime.store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with kit.launch() as chromium:
        yield chromium


def _dark_photo(seed: int) -> dict[str, Any]:
    dark = degrade.degrade("underexposed", emulated_camera.synthetic_fundus(seed, eye="R"), seed=3)
    return {"name": "dark.jpg", "mimeType": "image/jpeg", "buffer": emulated_camera.encode(dark)}


def _upload_dark(page: Any, seed: int) -> None:
    """Upload a photo that is too dark (right eye, macula) and wait for the verdict the page is sent."""
    page.check("input[name=eye][value=R]")
    page.check("input[name=field][value=macula]")
    page.set_input_files("#photo", files=[_dark_photo(seed)])
    page.click("#upload")
    page.locator("#quality-verdict").wait_for(timeout=30_000)


def _wait_loaded(page: Any, selector: str) -> None:
    """Wait until the image ``selector`` has loaded and shows pixels."""
    image = page.locator(selector)
    kit.wait_for(lambda: bool(image.evaluate("img => img.complete && img.naturalWidth > 0")), what=f"{selector} loaded")


def test_technician_sees_the_thumbnail_and_overlay_of_a_rejected_photo(browser: Any, gateway: Gateway) -> None:
    """Issue 14's journey, at both widths: the thumbnail of the rejected photo and the gate's marks on it."""
    for width in kit.WIDTHS.values():
        page = kit.open_page(browser, gateway.url, width=width, lang="en")
        try:
            kit.login(page, "tom", PASSWORD)
            page.goto(f"/technician/session/{gateway.visit}")
            _upload_dark(page, seed=20 + width)
            assert "not gradable" in page.locator("#quality-verdict").inner_text()
            assert page.locator("#quality-reasons li[data-reason=too_dark]").count() == 1
            shown = page.locator("#shown")
            _wait_loaded(page, "#shown img.thumb")
            # The overlay lies exactly over the photo, with the field circle and the dark tiles drawn.
            boxes = shown.locator(".frame").evaluate(
                "f => [f.querySelector('img').getBoundingClientRect(), f.querySelector('svg').getBoundingClientRect()]"
                ".map(r => [Math.round(r.left), Math.round(r.top), Math.round(r.width), Math.round(r.height)])"
            )
            assert boxes[0] == boxes[1] and boxes[0][2] > 100, boxes
            assert shown.locator("svg.overlay circle.mark.field").count() == 1
            assert shown.locator("svg.overlay rect.mark.dark").count() > 0
            assert page.locator("ul.legend.marks").inner_text().count("too dark") == 1
            # The new photo is in the gallery, queued for the hospital (no forwarder runs here).
            capture_id = shown.get_attribute("data-capture")
            assert page.locator(f"#photo-{capture_id}[data-delivery=queued]").count() == 1
            kit.screenshot(page, f"technician-rejected-{width}")
            # A click enlarges it, marks and all.
            shown.locator("a.enlarge").click()
            dialog = page.locator("#photo-dialog")
            dialog.locator("#photo-full").wait_for()
            _wait_loaded(page, "#photo-full")
            assert dialog.locator("svg.overlay rect.mark.dark").count() > 0
            kit.screenshot(page, f"technician-enlarged-{width}")
            page.click("#photo-close")
            assert not dialog.is_visible()
        finally:
            page.context.close()


def test_a_retake_after_an_upload_asks_for_a_file_and_greys_the_old_shot(browser: Any, gateway: Gateway) -> None:
    page = kit.open_page(browser, gateway.url, width=kit.WIDTHS["desktop"], lang="en")
    try:
        kit.login(page, "tom", PASSWORD)
        page.goto(f"/technician/session/{gateway.visit}")
        _upload_dark(page, seed=31)
        first = page.locator("#shown").get_attribute("data-capture")
        # The retake of an upload is a file input (there is no camera here at all; it must not be asked for).
        assert page.locator("#retake-box[data-source=upload] input[type=file]").count() == 1
        good = emulated_camera.encode(emulated_camera.synthetic_fundus(31, eye="R"))
        page.set_input_files("#retake-photo", files=[{"name": "good.jpg", "mimeType": "image/jpeg", "buffer": good}])
        page.click("#retake")
        page.locator("#quality-verdict.good").wait_for(timeout=30_000)
        assert page.locator(f"#photo-{first}.superseded .replaced").count() == 1
    finally:
        page.context.close()


def test_without_a_free_event_stream_the_page_polls_for_the_verdict(browser: Any, gateway: Gateway) -> None:
    """The polling fallback: every stream slot taken (503) and no waiting in the upload's answer, the page still
    gets the verdict, by asking the polling endpoint."""
    app = gateway.web.app
    assert app is not None
    slots = stream_slots(app)
    limit = slots.limit
    slots.limit, app.config["CG_VERDICT_WAIT_S"] = 0, 0.0
    page = kit.open_page(browser, gateway.url, width=kit.WIDTHS["desktop"], lang="en")
    polled: list[str] = []
    page.on("request", lambda r: polled.append(r.url) if "/technician/api/request/" in r.url else None)
    try:
        kit.login(page, "tom", PASSWORD)
        page.goto(f"/technician/session/{gateway.visit}")
        _upload_dark(page, seed=77)
        assert "not gradable" in page.locator("#quality-verdict").inner_text()
        assert polled, "the page did not fall back to polling"
    finally:
        slots.limit = limit
        app.config.pop("CG_VERDICT_WAIT_S")
        page.context.close()


def _open(browser: Any, gateway: Gateway, name: str, lang: str, width: int) -> Any:
    page = kit.open_page(browser, gateway.url, width=width, lang=lang)
    kit.login(page, "tom", PASSWORD)
    if name == "technician":
        page.goto("/technician")
        page.locator("#visits-table").wait_for()
    else:
        page.goto(f"/technician/session/{gateway.visit}")
        _upload_dark(page, seed=40 + width + (1 if lang == "zh" else 0))
        _wait_loaded(page, "#shown img.thumb")
    return page


@pytest.mark.parametrize(("lang", "width"), VIEWS, ids=[f"{lang}-{width}" for lang, width in VIEWS])
def test_technician_pages_fit_are_accessible_and_speak_the_language(
    browser: Any, gateway: Gateway, lang: str, width: int
) -> None:
    """The start page and a visit with a rejected photo: no horizontal scroll at 390 px, axe-core clean (refer,
    rescreen, queued and superseded included), no English on the Chinese pages; screenshots saved."""
    for name in PAGES:
        page = _open(browser, gateway, name, lang, width)
        try:
            kit.check_page(page, name, lang=lang, width=width)
            if width == kit.WIDTHS["phone"]:
                kit.assert_buttons_reachable(page, width)  # every action without scrolling sideways
        finally:
            page.context.close()


def test_screenshots_of_the_technician_pages_were_saved() -> None:
    names = {p.name for p in kit.SHOTS.glob("technician*.png")}
    expected = {f"{page}-{lang}-{width}.png" for page in PAGES for lang, width in VIEWS}
    assert expected <= names, sorted(expected - names)
