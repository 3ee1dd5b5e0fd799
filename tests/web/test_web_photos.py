"""Issue 14, the technician's desk: the photo shown as soon as it is stored, with the quality gate's reasons drawn
over it; the visit's gallery (superseded shots greyed and marked, times that tell shots apart, queued for the
hospital, refer vs rescreen); a retake that repeats how the photo was taken; an upload without a file said
clearly; a patient's visit of today opened again; today's visits on the start page.

The real Flask app through its test client, the real retina service (real quality gate, emulated camera) on an
asyncio core thread, a real store. Photos are generated (never the shared fundus data).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import browser_kit as kit
import cv2
import numpy as np
import pytest
from flask.testing import FlaskClient
from support import degrade
from support.factories import confirm, store_triaged_photo
from web_harness import add_users, csrf_of, login, make_config, post_form, retina_core

from gateway.clock import SystemClock
from gateway.emulate import camera as emulated_camera
from gateway.records import Field, TriageDecision
from gateway.retina import quality
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.web.app import create_app

PATIENT = "330106-RET-7781"


@dataclass
class Desk:
    runtime: Runtime
    client: FlaskClient
    session_url: str

    @property
    def session_id(self) -> str:
        return self.session_url.rsplit("/", 1)[-1]


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    video = emulated_camera.write_video(tmp_path / "camera.avi", emulated_camera.frames(6, size=(640, 480)))
    config = make_config(
        tmp_path / "state",
        retina={"camera": {"enabled": True, "device": str(video), "width": 640, "height": 480, "loop": True}},
        store={"low_disk_warn_mb": 0, "min_free_mb": 0},
    )
    runtime = open_runtime(config, clock=SystemClock("assume_synced"))
    add_users(runtime)
    try:
        with retina_core(runtime):
            client = create_app(GatewayServices(runtime), runtime.config).test_client()
            login(client, "tom")
            location = post_form(client, "/technician", "/technician", {"patient_id": PATIENT}).headers["Location"]
            yield Desk(runtime, client, location)
    finally:
        runtime.store.close()


def _finish(desk: Desk, response: object) -> str:
    """Follow a capture/upload answer to its result page once the core is done; the page's HTML."""
    location = response.headers["Location"]  # type: ignore[attr-defined]
    request_id = location.split("/result/")[1].split("?")[0]
    kit.wait_for(lambda: desk.client.get(f"/technician/api/request/{request_id}").get_json()["finished"],
                 what="the photo checked")  # fmt: skip
    return desk.client.get(location).get_data(as_text=True)


def _upload(desk: Desk, image: np.ndarray, *, eye: str = "L", field: str = "macula", retake_of: str = "") -> str:
    token = csrf_of(desk.client, desk.session_url)
    data = {"eye": eye, "field": field, "csrf_token": token, "photo": (BytesIO(emulated_camera.encode(image)), "p.jpg")}
    if retake_of:
        data["retake_of"] = retake_of
    answer = desk.client.post(desk.session_url + "/upload", data=data, content_type="multipart/form-data")
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]
    return _finish(desk, answer)


def _capture(desk: Desk, *, eye: str = "R", field: str = "macula", retake_of: str = "") -> str:
    token = csrf_of(desk.client, desk.session_url)
    form = {"eye": eye, "field": field, "csrf_token": token, "retake_of": retake_of}
    return _finish(desk, desk.client.post(desk.session_url + "/capture", data=form))


def _dark() -> np.ndarray:
    return degrade.degrade("underexposed", emulated_camera.synthetic_fundus(11, eye="L"), seed=3)


def _shown_id(html: str) -> str:
    match = re.search(r'<figure class="photo[^"]*" id="shown" data-capture="([^"]+)"', html)
    assert match, "the result shows no photo"
    return match.group(1)


# -- 1. the photo as soon as it is taken, with the gate's reason drawn on it -------------------------------------
def test_the_quality_gate_says_where_it_saw_its_reasons() -> None:
    """The gate returns the geometry it computes as typed data: the field circle, and the dark or blurred tiles
    only where a reason of their kind failed the photo."""
    good = emulated_camera.synthetic_fundus(11, eye="L")
    verdict = quality.assess(good)
    assert verdict.ok and verdict.geometry is not None
    circle = verdict.geometry.circle
    assert circle is not None and abs(circle.cx - 320) < 15 and abs(circle.cy - 240) < 15
    assert not (verdict.geometry.dark or verdict.geometry.bright or verdict.geometry.blurred)
    dark = quality.assess(_dark())
    assert "too_dark" in dark.reasons and dark.geometry is not None and dark.geometry.dark
    blurred = quality.assess(degrade.degrade("defocus", good, seed=3))
    assert "out_of_focus" in blurred.reasons and blurred.geometry is not None and blurred.geometry.blurred
    assert not blurred.geometry.dark
    # Tiles lie inside the photo and inside the field.
    assert dark.geometry.width == 640 and dark.geometry.height == 480
    for box in dark.geometry.dark:
        centre = (box.x + box.w / 2, box.y + box.h / 2)
        assert box.x >= 0 and box.x + box.w <= 640 and box.y >= 0 and box.y + box.h <= 480
        assert np.hypot(centre[0] - circle.cx, centre[1] - circle.cy) < circle.r * 1.1


def test_the_result_shows_the_thumbnail_with_the_reason_drawn_on_it(desk: Desk) -> None:
    html = _upload(desk, _dark())
    assert 'id="quality-verdict"' in html and 'data-reason="too_dark"' in html
    capture_id = _shown_id(html)
    thumb_url = f"/technician/photo/{capture_id}/thumb.jpg"
    assert f'src="{thumb_url}"' in html
    shown = html[html.index('id="shown"') : html.index("</figure>", html.index('id="shown"'))]
    assert '<svg class="overlay" viewBox="0 0 640 480"' in shown
    assert 'class="mark dark"' in shown and 'class="mark field' in shown
    assert 'class="legend marks"' in html  # what the marks mean, in words
    # The thumbnail: a small JPEG, behind login, cached by this browser only, revalidated by its ETag.
    thumb = desk.client.get(thumb_url)
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(thumb.data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and max(image.shape[:2]) <= 320
    cache = thumb.headers["Cache-Control"]
    assert "private" in cache and "public" not in cache
    assert PATIENT not in thumb_url
    again = desk.client.get(thumb_url, headers={"If-None-Match": thumb.headers["ETag"]})
    assert again.status_code == 304
    screen = desk.client.get(f"/technician/photo/{capture_id}/screen.jpg")
    assert screen.status_code == 200 and screen.mimetype == "image/jpeg"
    assert desk.client.get(f"/technician/photo/{capture_id}/huge.jpg").status_code == 404
    assert desk.client.get("/technician/photo/no-such-capture/thumb.jpg").status_code == 404
    # Pages still say no-store; a nurse and a visitor get nothing.
    assert desk.client.get(desk.session_url).headers["Cache-Control"] == "no-store"
    nurse = create_app(GatewayServices(desk.runtime), desk.runtime.config).test_client()
    assert nurse.get(thumb_url).status_code in (302, 401)
    login(nurse, "nina")
    assert nurse.get(thumb_url).status_code == 403


def test_the_overlay_is_found_again_for_a_photo_the_core_has_forgotten(desk: Desk) -> None:
    html = _upload(desk, _dark())
    capture_id = _shown_id(html)
    for key, _ in desk.runtime.progress.items():
        desk.runtime.progress.remove(key)  # as after a restart: the live outcome is gone
    geometry = GatewayServices(desk.runtime).photos.geometry(capture_id)
    assert geometry is not None and geometry.dark and geometry.circle is not None
    gallery = desk.client.get(desk.session_url).get_data(as_text=True)
    figure = gallery[gallery.index(f'id="photo-{capture_id}"') :]
    assert 'class="mark dark"' in figure[: figure.index("</figure>")]


# -- 2. the visit's gallery --------------------------------------------------------------------------------------
def test_gallery_greys_the_shot_its_retake_replaced_and_tells_shots_apart(desk: Desk) -> None:
    first = _shown_id(_capture(desk, eye="R", field="macula"))
    second = _shown_id(_capture(desk, eye="R", field="macula", retake_of=first))
    other = _shown_id(_upload(desk, emulated_camera.synthetic_fundus(5, eye="L"), eye="L", field="disc"))
    html = desk.client.get(desk.session_url).get_data(as_text=True)
    assert 'id="gallery"' in html and '<table id="captures-table"' not in html
    figures = dict(re.findall(r'<figure class="(photo[^"]*)" id="photo-([^"]+)"', html)[i][::-1] for i in range(3))
    if first != second:  # the looping emulated camera may hand back the very same frame: stored once
        assert "superseded" in figures[first]
        assert f'data-replaced-by="{second}"' in html
        assert "Replaced by the retake of" in html
    assert "superseded" not in figures[second] and "superseded" not in figures[other]
    # A gradable photo stays the visit's photo when its retake fails the gate.
    dark = _shown_id(_upload(desk, _dark(), eye="L", field="disc"))
    html = desk.client.get(desk.session_url).get_data(as_text=True)
    assert f'id="photo-{other}" data-capture' in html and f'data-replaced-by="{dark}"' not in html
    # Times in the clinic-time convention, with seconds: shots a few seconds apart do not all read "10:40".
    assert re.search(r'<span class="when">\d\d:\d\d:\d\d UTC', html)


def test_retake_repeats_the_way_the_photo_was_taken(desk: Desk) -> None:
    """After an upload, "Retake" asks for a file and posts it as an upload; it never fires the camera."""
    uploaded = _upload(desk, _dark())
    box = uploaded[uploaded.index('id="retake-box"') : uploaded.index("</section>", uploaded.index('id="retake-box"'))]
    assert 'data-source="upload"' in box
    assert f'action="{desk.session_url}/upload"' in box and 'type="file"' in box
    assert "/capture" not in box
    first = _shown_id(uploaded)
    retaken = _upload(desk, emulated_camera.synthetic_fundus(11, eye="L"), retake_of=first)
    assert 'id="quality-verdict"' in retaken
    # After a camera photo, the retake takes another with the camera.
    captured = _capture(desk)
    box = captured[captured.index('id="retake-box"') : captured.index("</section>", captured.index('id="retake-box"'))]
    assert 'data-source="camera"' in box and f'action="{desk.session_url}/capture"' in box


def test_the_answer_to_the_shutter_is_the_verdict_page_itself(desk: Desk) -> None:
    """Long-polling: taking the photo waits for its verdict (on the progress board's condition) and answers with
    the verdict, instead of a "Checking…" page that learns it a polling interval and a reload later."""
    assert desk.client.application.config.setdefault("CG_VERDICT_WAIT_S", 2.0) == 2.0
    desk.client.application.config["CG_VERDICT_WAIT_S"] = 120.0  # this machine may be slow: no race in the test
    token = csrf_of(desk.client, desk.session_url)
    taken = desk.client.post(desk.session_url + "/capture", data={"eye": "R", "field": "disc", "csrf_token": token})
    html = desk.client.get(taken.headers["Location"]).get_data(as_text=True)  # at once: no waiting here
    assert 'id="quality-verdict"' in html and "data-poll-url" not in html


def test_upload_without_a_file_says_so_next_to_the_file_field(desk: Desk) -> None:
    token = csrf_of(desk.client, desk.session_url)
    answer = desk.client.post(
        desk.session_url + "/upload",
        data={"eye": "R", "field": "macula", "csrf_token": token},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 400  # not a silent reload
    html = answer.get_data(as_text=True)
    assert 'id="upload-error"' in html and "No photo file was chosen" in html
    assert 'aria-invalid="true"' in html


def test_each_photo_says_whether_it_is_still_queued_for_the_hospital(desk: Desk) -> None:
    capture_id = _shown_id(_upload(desk, emulated_camera.synthetic_fundus(5, eye="L")))
    html = desk.client.get(desk.session_url).get_data(as_text=True)
    assert f'data-capture="{capture_id}" data-source="upload" data-delivery="queued"' in html
    assert "Queued for the hospital" in html
    # The platform acknowledges the capture message and all its chunks: it is at the hospital.
    store = desk.runtime.store
    ids = [r["message_id"] for r in store.query("SELECT message_id FROM outbox WHERE record_ref = ?",
                                                [f"capture:{capture_id}"])]  # fmt: skip
    assert confirm(store, ids) == len(ids)
    html = desk.client.get(desk.session_url).get_data(as_text=True)
    assert f'data-capture="{capture_id}" data-source="upload" data-delivery="delivered"' in html
    assert "Queued for the hospital" not in html


def _store_triaged(desk: Desk, decision: TriageDecision, seed: int) -> str:
    image = emulated_camera.encode(emulated_camera.synthetic_fundus(seed, eye="R"))
    return store_triaged_photo(desk.runtime.store, image, patient_id=PATIENT, session_id=desk.session_id,
                               decision=decision, field=Field.MACULA if seed % 2 else Field.DISC)  # fmt: skip


def test_refer_and_rescreen_look_different(desk: Desk) -> None:
    refer = _store_triaged(desk, TriageDecision.REFER, 1)
    rescreen = _store_triaged(desk, TriageDecision.RESCREEN, 2)
    html = desk.client.get(desk.session_url).get_data(as_text=True)

    def decision_of(capture_id: str) -> str:
        figure = html[html.index(f'id="photo-{capture_id}"') :]
        match = re.search(r'<span class="decision (\w+)" data-decision="\w+"><span aria-hidden="true">(.)</span>',
                          figure)  # fmt: skip
        assert match, figure[:400]
        return match.group(1) + match.group(2)

    assert decision_of(refer) == "refer\u26a0" and decision_of(rescreen) == "rescreen\u2713"


# -- the visit: opened again, listed on the start page -----------------------------------------------------------
def test_reentering_a_patient_opens_todays_visit(desk: Desk) -> None:
    _capture(desk)
    again = post_form(desk.client, "/technician", "/technician", {"patient_id": PATIENT}).headers["Location"]
    assert again == desk.session_url  # today's visit, with its photo, not a new empty one
    assert 'id="gallery"' in desk.client.get(again).get_data(as_text=True)
    other = post_form(desk.client, "/technician", "/technician", {"patient_id": "OTHER-1"}).headers["Location"]
    assert other != desk.session_url
    start = desk.client.get("/technician").get_data(as_text=True)
    assert 'id="visits-table"' in start
    assert start.count("<tr data-session=") == 2 and PATIENT in start and "OTHER-1" in start
    row = start[start.index(f'data-session="{desk.session_id}"') :]
    assert re.search(r'<td class="num">1</td>', row[: row.index("</tr>")])
