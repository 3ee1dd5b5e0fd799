"""Issue 15 item 10: every session route checks that the session's kind belongs to the desk (role).

A nurse could open a technician's photo session at ``/nurse/session/<id>`` and read the patient id. Each
desk's session routes now answer 404 for the other desk's sessions and requests, and audit the attempt.
"""

from __future__ import annotations

from flask.testing import FlaskClient
from web_harness import csrf_of, login, post_form

from gateway.desk import DeskState, RetinaProgress
from gateway.runtime import Runtime
from gateway.store import audit

PATIENT = "440301-PAT-7731"


def refusals(runtime: Runtime) -> list[audit.AuditRow]:
    return [r for r in audit.recent(runtime.store) if r.action == "access_refused"]


def test_nurse_cannot_open_a_photo_session(client: FlaskClient, runtime: Runtime) -> None:
    login(client, "tom")
    location = post_form(client, "/technician", "/technician", {"patient_id": PATIENT}).headers["Location"]
    session_id = location.rsplit("/", 1)[-1]
    assert PATIENT in client.get(location).get_data(as_text=True)  # the technician's own page shows it
    client.post("/logout", data={"csrf_token": csrf_of(client, "/technician")})

    login(client, "nina")
    token = csrf_of(client, "/nurse")
    answers = [
        client.get(f"/nurse/session/{session_id}"),
        client.get(f"/nurse/api/progress/{session_id}"),
        client.post(f"/nurse/session/{session_id}/link", data={"csrf_token": token}),
    ]
    for answer in answers:
        assert answer.status_code == 404, answer.request.path
        assert PATIENT not in answer.get_data(as_text=True)
    refused = refusals(runtime)
    assert len(refused) == 3
    assert {(r.actor, r.target_kind, r.target_id) for r in refused} == {("nina", "session", session_id)}
    assert all(r.patient_id is None for r in refused)


def test_nurse_cannot_poll_a_capture_request(client: FlaskClient, runtime: Runtime) -> None:
    request_id = "c0ffee" * 5 + "00"
    runtime.progress.put(request_id, RetinaProgress(state=DeskState.DONE))
    login(client, "nina")
    assert client.get(f"/nurse/api/progress/{request_id}").status_code == 404
    assert client.get(f"/nurse/session/{request_id}").status_code == 404
    assert len(refusals(runtime)) == 2


def test_technician_cannot_open_a_meter_session(client: FlaskClient, runtime: Runtime) -> None:
    session_id = _meter_session(runtime)
    login(client, "tom")
    assert client.get(f"/technician/session/{session_id}").status_code == 404
    assert client.get(f"/technician/api/request/{session_id}").status_code == 404
    assert client.get(f"/technician/session/{session_id}/result/{session_id}").status_code == 404
    assert {r.target_id for r in refusals(runtime)} == {session_id}
    # The nurse's own desk still opens it.
    client.post("/logout", data={"csrf_token": csrf_of(client, "/technician")})
    login(client, "nina")
    assert PATIENT in client.get(f"/nurse/session/{session_id}").get_data(as_text=True)


def test_unknown_sessions_are_404_without_an_audit_row(client: FlaskClient, runtime: Runtime) -> None:
    login(client, "nina")
    assert client.get("/nurse/session/nope").status_code == 404
    assert refusals(runtime) == []


def _meter_session(runtime: Runtime) -> str:
    from gateway.store import sessions

    return sessions.start_session(runtime.store, "meter", patient_id=PATIENT, meter_id="serial:TM1", operator="nina")
