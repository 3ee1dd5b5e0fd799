"""Referral inbox through the Flask test client: who may read it, the acknowledge form (CSRF, audit,
seen), the navigation badge and its count endpoint (no patient data)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from support.factories import store_capture
from web_harness import csrf_of, login, post_form

from gateway.records import Eye, Field, Referral, ReferralHold
from gateway.runtime import Runtime
from gateway.store import audit
from gateway.store import referrals as store_referrals
from gateway.store.sessions import start_session

PATIENT = "110105-RF-3307"
NOTE = "Moderate NPDR in the left eye.\nPlease book within 4 weeks."
BADGE_RE = re.compile(r'<span class="nav-badge" id="referral-badge"[^>]*>([^<]*)</span>')


@pytest.fixture
def received(runtime: Runtime) -> dict[str, str]:
    """Three decisions as the forwarder stores them: for a patient, for a photo taken here, for another photo."""
    capture_id, _message, _chunks = store_capture(runtime.store, b"\xff\xd8 a photo \xff\xd9")  # patient P-1, R eye
    start_session(runtime.store, "retina", patient_id=PATIENT, operator="tom")  # PATIENT was seen here
    referrals = {
        "patient": Referral(referral_id="ref-a", decision="refer_urgent", patient_id=PATIENT, note=NOTE,
                            grader="Dr Wang", decided_at=datetime(2026, 11, 22, 6, 30, tzinfo=UTC)),
        "capture": Referral(referral_id="ref-b", decision="rescreen_12m", capture_id=capture_id, grader="Dr Li"),
        "elsewhere": Referral(referral_id="ref-c", decision="no_dr", capture_id="c" * 32),
    }  # fmt: skip
    for referral in referrals.values():
        assert store_referrals.add_referral(runtime.store, referral)
    return {key: r.referral_id for key, r in referrals.items()}


def _acks(runtime: Runtime) -> list[audit.AuditRow]:
    return [r for r in audit.recent(runtime.store) if r.action == "referral_acknowledged"]


def _acknowledge(client: FlaskClient, referral_id: str) -> Any:
    """Press the acknowledge button of the inbox page (its CSRF token included)."""
    return client.post(f"/referrals/{referral_id}/acknowledge", data={"csrf_token": csrf_of(client, "/referrals")})


def _badge(html: str) -> str | None:
    match = BADGE_RE.search(html)
    return None if match is None else match.group(1)


@pytest.mark.parametrize("user", ["tom", "nina", "ada"])
def test_desk_roles_see_every_decision_newest_first(client: FlaskClient, received: dict[str, str], user: str) -> None:
    login(client, user)
    html = client.get("/referrals").get_data(as_text=True)
    assert re.findall(r'<tr data-referral="([^"]+)" class="([\w ]+)"', html) == [
        ("ref-c", "unseen held"), ("ref-b", "unseen"), ("ref-a", "unseen"),
    ]  # fmt: skip
    assert PATIENT in html and "Refer urgently" in html and "Dr Wang" in html
    assert "Moderate NPDR in the left eye." in html and "Please book within 4 weeks." in html
    # A decision that names only a photo taken here gets the photo's patient, eye and field.
    row_b = html[html.index('data-referral="ref-b"') : html.index('data-referral="ref-a"')]
    assert "P-1" in row_b and "Right (OD)" in row_b and "Macula-centred" in row_b and "Rescreen in 12 months" in row_b
    row_c = html[html.index('data-referral="ref-c"') : html.index('data-referral="ref-b"')]
    assert "a photo not taken at this gateway" in row_c
    assert "Not yet acknowledged: 3" in html
    assert _badge(html) == "3"


def test_chinese_inbox(client: FlaskClient, received: dict[str, str]) -> None:
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "zh-CN"
    login(client, "tom")
    html = client.get("/referrals").get_data(as_text=True)
    assert "紧急转诊" in html and "确认已阅" in html and "尚未确认" in html and "3 条" in html and "转诊结论" in html


def test_it_and_anonymous_are_refused(client: FlaskClient, runtime: Runtime, received: dict[str, str]) -> None:
    ack = f"/referrals/{received['patient']}/acknowledge"
    # Anonymous: the login page (JSON 401 for the count), nothing acknowledged.
    assert client.get("/referrals").headers["Location"].startswith("/login")
    assert client.get("/referrals/api/unseen").status_code == 401
    response = client.post(ack, data={"csrf_token": csrf_of(client)})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    # IT: no patient data, so no inbox, no count, no badge.
    login(client, "ivy")
    refused = client.get("/referrals")
    assert refused.status_code == 403 and PATIENT not in refused.get_data(as_text=True)
    assert client.get("/referrals/api/unseen").status_code == 403
    assert client.post(ack, data={"csrf_token": csrf_of(client, "/status")}).status_code == 403
    status_page = client.get("/status").get_data(as_text=True)
    assert _badge(status_page) is None and "nav-referrals" not in status_page
    assert store_referrals.count_unseen(runtime.store) == 3 and not _acks(runtime)
    refusals = [r for r in audit.recent(runtime.store) if r.action == "access_refused" and r.actor == "ivy"]
    assert len(refusals) == 3


def test_acknowledge_without_a_valid_csrf_token_is_refused(
    client: FlaskClient, runtime: Runtime, received: dict[str, str]
) -> None:
    login(client, "tom")
    ack = f"/referrals/{received['patient']}/acknowledge"
    for data in ({}, {"csrf_token": "forged"}):
        response = client.post(ack, data=data)
        assert response.status_code == 400
        assert "did not come from this gateway" in response.get_data(as_text=True)
    assert store_referrals.count_unseen(runtime.store) == 3 and not _acks(runtime)


def test_acknowledge_marks_seen_audits_and_the_count_goes_down(
    client: FlaskClient, runtime: Runtime, received: dict[str, str]
) -> None:
    login(client, "tom")
    assert client.get("/referrals/api/unseen").get_json() == {"unseen": 3}
    response = _acknowledge(client, received["patient"])
    assert response.status_code == 302 and response.headers["Location"] == "/referrals"
    (row,) = [r for r in store_referrals.list_referrals(runtime.store) if r.referral_id == received["patient"]]
    assert row.seen_at is not None
    assert store_referrals.count_unseen(runtime.store) == 2
    (trail,) = _acks(runtime)
    assert (trail.actor, trail.target_kind, trail.target_id, trail.patient_id) == (
        "tom", "referral", received["patient"], PATIENT,
    )  # fmt: skip
    assert trail.detail["decision"] == "refer_urgent"
    html = client.get("/referrals").get_data(as_text=True)
    assert "Decision acknowledged." in html and "Not yet acknowledged: 2" in html
    assert f'<tr data-referral="{received["patient"]}" class="seen">' in html
    assert f'data-acknowledge="{received["patient"]}"' not in html
    assert _badge(html) == "2"
    assert client.get("/referrals/api/unseen").get_json() == {"unseen": 2}
    # The nurse on another desk acknowledges the same one late: said so, and still one audit row.
    other = client.application.test_client()
    login(other, "nina")
    late = _acknowledge(other, received["patient"])
    assert late.status_code == 302
    assert "Someone already acknowledged this decision." in other.get("/referrals").get_data(as_text=True)
    assert len(_acks(runtime)) == 1
    # A decision for a photo only: the audit row carries the photo's patient.
    _acknowledge(client, received["capture"])
    assert _acks(runtime)[0].patient_id == "P-1"
    assert store_referrals.count_unseen(runtime.store) == 1


def test_unknown_referral_is_404(client: FlaskClient, runtime: Runtime, received: dict[str, str]) -> None:
    login(client, "tom")
    assert _acknowledge(client, "no-such-id").status_code == 404
    assert store_referrals.count_unseen(runtime.store) == 3 and not _acks(runtime)


def test_badge_carries_a_count_only_and_hides_at_zero(client: FlaskClient, runtime: Runtime) -> None:
    login(client, "nina")
    empty = client.get("/nurse").get_data(as_text=True)
    assert re.search(r'id="referral-badge"[^>]* hidden>0</span>', empty)
    assert "No decisions have been received yet." in client.get("/referrals").get_data(as_text=True)
    referral = Referral(referral_id="ref-z", decision="refer_routine", patient_id=PATIENT)
    assert store_referrals.add_referral(runtime.store, referral)
    page = client.get("/nurse").get_data(as_text=True)
    nav = page[page.index("<nav>") : page.index("</nav>")]
    assert _badge(nav) == "1" and PATIENT not in nav and "refer_routine" not in nav
    assert client.get("/referrals/api/unseen").get_json() == {"unseen": 1}


def test_technician_session_shows_the_decision_in_words(client: FlaskClient, received: dict[str, str]) -> None:
    login(client, "tom")
    location = post_form(client, "/technician", "/technician", {"patient_id": PATIENT}).headers["Location"]
    html = client.get(location).get_data(as_text=True)
    assert 'data-decision="refer_urgent">Refer urgently<' in html


def test_patient_view_includes_decisions_that_name_only_one_of_the_patients_photos(
    runtime: Runtime, received: dict[str, str]
) -> None:
    """The technician page lists a patient's decisions through this query: a decision sent for a photo only
    must be there under the photo's patient, with the photo's eye."""
    rows = store_referrals.list_referrals(runtime.store, patient_id="P-1")
    assert [(r.referral_id, r.patient_id, r.eye) for r in rows] == [("ref-b", "P-1", "R")]
    assert [r.referral_id for r in store_referrals.list_referrals(runtime.store, patient_id=PATIENT)] == ["ref-a"]


def test_referral_rows_come_typed(runtime: Runtime, received: dict[str, str]) -> None:
    """A decision about a photo taken here has that photo's eye and field as enums; one about a patient has none."""
    about_photo = store_referrals.get_referral(runtime.store, received["capture"])
    assert about_photo is not None and (about_photo.eye, about_photo.field) == (Eye.RIGHT, Field.MACULA)
    assert type(about_photo.eye) is Eye and type(about_photo.field) is Field
    assert about_photo.held_reason is None and about_photo.seen_by is None and about_photo.captured_at is not None
    about_patient = store_referrals.get_referral(runtime.store, received["patient"])
    assert about_patient is not None and (about_patient.eye, about_patient.field, about_patient.captured_at) == (
        None, None, None,
    )  # fmt: skip
    assert about_patient.decided_at == "2026-11-22T06:30:00.000+00:00"
    store_referrals.add_referral(runtime.store, Referral(referral_id="ref-z", decision="no_dr", patient_id="P-NEW"))
    held = store_referrals.get_referral(runtime.store, "ref-z")
    assert held is not None and held.held_reason is ReferralHold.UNKNOWN_PATIENT


def test_a_decision_whose_patient_disagrees_with_its_photo_is_held_plainly(
    client: FlaskClient, runtime: Runtime
) -> None:
    """Issue 15 #9: named patient B, photo of patient P-1: stored, held, shown as neither patient's."""
    capture_id, _message, _chunks = store_capture(runtime.store, b"\xff\xd8 P-1's photo \xff\xd9")
    added = store_referrals.add_referral(
        runtime.store, Referral(referral_id="ref-x", decision="refer_urgent", capture_id=capture_id, patient_id=PATIENT)
    )
    assert added
    login(client, "tom")
    html = client.get("/referrals").get_data(as_text=True)
    row = html[html.index('data-referral="ref-x"') :]
    row = row[: row.index("</tr>")]
    assert 'class="unseen held"' in row and "Held for review" in row
    assert f"names patient {PATIENT}, but the photo belongs to patient P-1" in row
    # the patient pages do not list it as either patient's
    assert store_referrals.list_referrals(runtime.store, patient_id=PATIENT) == []
    assert store_referrals.list_referrals(runtime.store, patient_id="P-1") == []
    assert _acknowledge(client, "ref-x").status_code == 302  # still acknowledged at the desk like any other
    assert added.held == "patient_mismatch"


@pytest.mark.parametrize("referral_id", ["r.2026-11:ok_1", "R-0001", "9f0e1d2c.v2"])
def test_every_id_the_contract_admits_can_be_acknowledged(
    client: FlaskClient, runtime: Runtime, referral_id: str
) -> None:
    from gateway.wire.downlink import ID_PATTERN

    assert ID_PATTERN.fullmatch(referral_id)
    store_referrals.add_referral(runtime.store, Referral(referral_id=referral_id, decision="no_dr", patient_id="P-9"))
    login(client, "nina")
    assert _acknowledge(client, referral_id).status_code == 302
    assert store_referrals.count_unseen(runtime.store) == 0


def test_empty_inbox_says_one_thing(client: FlaskClient) -> None:
    """Issue 14: the empty inbox showed "Every decision has been acknowledged." and "No decisions have been
    received yet." at once."""
    login(client, "nina")
    html = client.get("/referrals").get_data(as_text=True)
    assert "No decisions have been received yet." in html
    assert "Every decision has been acknowledged." not in html and 'id="unseen-summary"' not in html


def test_a_decision_for_a_patient_this_clinic_never_saw_is_held(client: FlaskClient, runtime: Runtime) -> None:
    """Issue 14: a decision for a patient with no reading, photo, visit or meter link here was accepted silently;
    it is held for review (``unknown_patient``), shown as nobody's, and said so at the desk."""
    stranger = Referral(referral_id="ref-s", decision="refer_urgent", patient_id="999999-NEVER-SEEN")
    added = store_referrals.add_referral(runtime.store, stranger)
    assert added is not None and added.held == "unknown_patient"
    assert store_referrals.list_referrals(runtime.store, patient_id="999999-NEVER-SEEN") == []
    # A patient the clinic did see (here: a reading downloaded for them) is not held.
    store_capture(runtime.store, b"\xff\xd8 P-1 \xff\xd9")
    known = store_referrals.add_referral(
        runtime.store, Referral(referral_id="ref-k", decision="no_dr", patient_id="P-1")
    )
    assert known is not None and known.held is None
    login(client, "tom")
    html = client.get("/referrals").get_data(as_text=True)
    row = html[html.index('data-referral="ref-s"') :]
    row = row[: row.index("</tr>")]
    assert 'class="unseen held"' in row and 'data-held="unknown_patient"' in row
    assert "999999-NEVER-SEEN, whom this gateway has never seen" in row
    zh = client.application.test_client()
    zh.environ_base["HTTP_ACCEPT_LANGUAGE"] = "zh-CN"
    login(zh, "nina")
    assert "本网关从未接诊过" in zh.get("/referrals").get_data(as_text=True)


def test_acknowledged_says_by_whom_and_when(client: FlaskClient, runtime: Runtime, received: dict[str, str]) -> None:
    """Issue 14: "Acknowledged" did not say by whom."""
    login(client, "nina")
    _acknowledge(client, received["capture"])
    html = client.get("/referrals").get_data(as_text=True)
    row = html[html.index(f'data-referral="{received["capture"]}"') :]
    row = row[: row.index("</tr>")]
    assert "Acknowledged by nina" in row
    assert "2026-11-23 10:00 UTC+8" in row  # the fake clock's 02:00 UTC, in the clinic's zone, labelled
    (seen,) = [r for r in store_referrals.inbox(runtime.store) if r.referral_id == received["capture"]]
    assert seen.seen_by == "nina"
