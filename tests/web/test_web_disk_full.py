"""Issue 15 item 5: a full store gives a clear "storage full" answer, never a 500 after storing.

With ``min_free_mb = 0`` and the disk really full, a photo upload answered HTTP 500 while the photo was stored
and forwarded, and its audit row was missing: the page wrote the audit row after handing the photo to the core,
in a transaction of its own. Now the audit row is written in the capture's own transaction, and a store that
cannot take the photo gives HTTP 507 with the message in the page's language.

The full store is real: SQLite's ``max_page_count`` caps the database file (as in
``tests/appliance/test_appliance_disk.py``), the database is filled to the brim with real rows, and then
``extra`` pages are allowed. Sweeping ``extra`` moves the point where the disk fills across every write the
upload makes (capture row, outbox rows, audit row), so each way of running out is met once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from support.small_fs import run_on_small_fs
from web_harness import CoreThread, add_users, csrf_of, login, make_config, post_form

from gateway.clock import SystemClock
from gateway.emulate import camera as emulated_camera
from gateway.errors import DiskFull
from gateway.retina.service import RetinaService
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store import Store
from gateway.web.app import create_app

PATIENT = "110105-PX-9001"
STORAGE_FULL_ZH = "网关存储已满"
STORAGE_FULL_EN = "The gateway's storage is full"
ZH = {"Accept-Language": "zh-CN,zh;q=0.9"}


FILLERS = (
    "INSERT INTO kv (key, value, updated_at) VALUES (hex(randomblob(16)), ?, '')",
    # The outbox's two tables and the audit table's last pages too, so the upload's rows need new pages
    # (filler messages are parked and never sent; filler bodies take seqs no message will have).
    "INSERT INTO outbox (message_id, kind, created_at, state, parked_reason) "
    "VALUES (hex(randomblob(16)), 'filler', '', 'parked', ?)",
    "INSERT INTO outbox_bodies (seq, topic, payload) VALUES (-1 - abs(random() % 1000000000000), 'filler', ?)",
    "INSERT INTO audit (at, actor, action, detail) VALUES ('', 'filler', 'filler', ?)",
)


def fill(store: Store) -> None:
    """Fill the database up to its page cap with real rows: big ones first, then ever smaller ones."""
    for size in (8000, 2000, 400, 100, 20, 1):
        for sql in FILLERS:
            while True:
                try:
                    with store.transaction() as db:
                        db.execute(sql, ["x" * size])
                except DiskFull:
                    break


def allow_pages(store: Store, extra: int) -> None:
    pages = int(store.scalar("PRAGMA page_count"))
    store.db.conn.execute(f"PRAGMA max_page_count = {pages + extra}")


@pytest.fixture
def retina_runtime(tmp_path: Path) -> Iterator[Runtime]:
    config = make_config(tmp_path / "state", store={"min_free_mb": 0, "max_page_count": 400})
    rt = open_runtime(config, clock=SystemClock("assume_synced"))
    add_users(rt)
    service = RetinaService(rt, load=False)
    rt.components.append(service)
    core = CoreThread(rt)
    for request_type in RetinaService.serves:
        rt.desk.queue(request_type)
    core.start(service.run)
    yield rt
    core.stop()
    rt.store.close()


def wait_finished(client: FlaskClient, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = client.get(f"/technician/api/request/{request_id}").get_json()
        if state["finished"]:
            return state  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("the upload did not finish")


def counts(store: Store) -> tuple[int, int, int]:
    """(captures, upload audit rows, outbox messages of captures)."""
    return (
        int(store.scalar("SELECT count(*) FROM captures")),
        int(store.scalar("SELECT count(*) FROM audit WHERE action = 'retina_upload'")),
        int(store.scalar("SELECT count(*) FROM outbox WHERE kind IN ('capture', 'image_chunk')")),
    )


def photo_session_then_fill(runtime: Runtime) -> tuple[FlaskClient, str]:
    """The technician logged in with a photo session open (its page seen); then the store fills up."""
    client = create_app(GatewayServices(runtime), runtime.config).test_client()
    login(client, "tom")
    location = post_form(client, "/technician", "/technician", {"patient_id": PATIENT}).headers["Location"]
    client.get(location)
    fill(runtime.store)
    return client, location


def upload(client: FlaskClient, location: str, photo: bytes) -> tuple[int, int, str]:
    """Upload through the page (Chinese); (POST status, final page status, final page text)."""
    answer = client.post(
        location + "/upload",
        data={"eye": "R", "field": "macula", "csrf_token": csrf_of(client, location),
              "photo": (BytesIO(photo), "photo.jpg")},
        content_type="multipart/form-data",
        headers=ZH,
    )  # fmt: skip
    if answer.status_code != 302:
        return answer.status_code, answer.status_code, answer.get_data(as_text=True)
    result_url = answer.headers["Location"]
    wait_finished(client, result_url.split("/result/")[1].split("?")[0])
    page = client.get(result_url, headers=ZH)
    return answer.status_code, page.status_code, page.get_data(as_text=True)


@pytest.mark.parametrize("extra", range(0, 14, 1))
def test_upload_into_a_full_store_is_refused_clearly_or_stored_with_its_audit_row(
    retina_runtime: Runtime, extra: int
) -> None:
    runtime = retina_runtime
    client, location = photo_session_then_fill(runtime)
    allow_pages(runtime.store, extra)
    photo = emulated_camera.encode(emulated_camera.synthetic_fundus(extra, eye="R"))

    posted, final, text = upload(client, location, photo)

    assert posted != 500 and final != 500, text[-2000:]
    captures, audited, messages = counts(runtime.store)
    assert captures == audited, f"{captures} captures stored, {audited} upload audit rows"
    if captures:
        assert final == 200 and messages >= 2
    else:
        assert final == 507, text[-2000:]
        assert STORAGE_FULL_ZH in text
        assert messages == 0
        assert PATIENT in text or posted == 507  # still the patient's page, or the storage-full page


def test_the_sweep_covers_both_outcomes(retina_runtime: Runtime) -> None:
    """Sanity check of the sweep above: enough pages for the whole upload stores it, none refuses it."""
    runtime = retina_runtime
    client, location = photo_session_then_fill(runtime)
    photo = emulated_camera.encode(emulated_camera.synthetic_fundus(1, eye="R"))
    allow_pages(runtime.store, 0)
    assert upload(client, location, photo)[1] == 507
    allow_pages(runtime.store, 14)
    assert upload(client, location, photo)[1] == 200
    assert counts(runtime.store)[:2] == (1, 1)


def test_every_desk_request_into_a_full_store_is_507_in_the_page_language(retina_runtime: Runtime) -> None:
    """Meter download, camera capture, a new photo session: refused at once, nothing asked, nothing audited."""
    from gateway.desk import SerialSyncRequest
    from gateway.records import MeterInfo
    from gateway.store.readings import upsert_meter

    runtime = retina_runtime
    queue = runtime.desk.queue(SerialSyncRequest)  # a meter source is listening
    upsert_meter(runtime.store, MeterInfo(meter_id="serial:TM1", family="scripted", transport="serial", serial="TM1"))
    client = create_app(GatewayServices(runtime), runtime.config).test_client()
    login(client, "ada")  # admin: both desks
    location = post_form(client, "/technician", "/technician", {"patient_id": PATIENT}).headers["Location"]
    audit_rows = int(runtime.store.scalar("SELECT count(*) FROM audit"))
    runtime.store.min_free_mb = runtime.store.free_bytes() // (1024 * 1024) + 100  # below the floor for real

    token = csrf_of(client, "/nurse")
    answers = {
        "sync": client.post("/nurse/sync", data={"patient_id": PATIENT, "target": "serial:TM1", "csrf_token": token},
                            headers=ZH),
        "capture": client.post(location + "/capture", data={"eye": "L", "field": "disc", "csrf_token": token},
                               headers=ZH),
    }  # fmt: skip
    fill(runtime.store)  # and now the database itself is full as well
    runtime.store.min_free_mb = 0
    answers["session"] = client.post("/technician", data={"patient_id": "P-2", "csrf_token": token}, headers=ZH)
    answers["api"] = client.post("/nurse/sync", data={"patient_id": PATIENT, "target": "serial:TM1",
                                                      "csrf_token": token})  # fmt: skip
    for name, answer in answers.items():
        assert answer.status_code == 507, name
    for name in ("sync", "capture", "session"):
        assert STORAGE_FULL_ZH in answers[name].get_data(as_text=True), name
    assert STORAGE_FULL_EN in answers["api"].get_data(as_text=True)
    assert queue.empty()
    assert int(runtime.store.scalar("SELECT count(*) FROM audit WHERE actor != 'filler'")) == audit_rows
    assert int(runtime.store.scalar("SELECT count(*) FROM sessions")) == 1


REAL_DISK_SCRIPT = """
import os, sys, time
from io import BytesIO
from pathlib import Path
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/web"]
from web_harness import CoreThread, add_users, csrf_of, login, make_config, post_form
from gateway.clock import SystemClock
from gateway.runtime import open_runtime
from gateway.emulate import camera
from gateway.retina.service import RetinaService
from gateway.services import GatewayServices
from gateway.web.app import create_app

root = Path(sys.argv[1])
rt = open_runtime(make_config(root / "state", store={"min_free_mb": 0}), clock=SystemClock("assume_synced"))
add_users(rt)
service = RetinaService(rt, load=False)
core = CoreThread(rt)
for request_type in RetinaService.serves:
    rt.desk.queue(request_type)
core.start(service.run)
client = create_app(GatewayServices(rt), rt.config).test_client()
login(client, "tom")
location = post_form(client, "/technician", "/technician", {"patient_id": "P-1"}).headers["Location"]
photo = camera.encode(camera.synthetic_fundus(1, eye="R"))
fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)  # the disk fills up for real
for size in (65536, 4096, 512, 1):
    try:
        while True:
            os.write(fd, b"x" * size)
    except OSError:
        pass
os.close(fd)
answer = client.post(location + "/upload", content_type="multipart/form-data", headers={"Accept-Language": "zh"},
                     data={"eye": "R", "field": "macula", "csrf_token": csrf_of(client, location),
                           "photo": (BytesIO(photo), "p.jpg")})
final = answer
if answer.status_code == 302:
    request_id = answer.headers["Location"].split("/result/")[1].split("?")[0]
    while not client.get(f"/technician/api/request/{request_id}").get_json()["finished"]:
        time.sleep(0.05)
    final = client.get(answer.headers["Location"], headers={"Accept-Language": "zh"})
stored = rt.store.scalar("SELECT count(*) FROM captures")
audited = rt.store.scalar("SELECT count(*) FROM audit WHERE action = 'retina_upload'")
core.stop()
print(answer.status_code, final.status_code, stored, audited, int("网关存储已满" in final.get_data(as_text=True)))
"""


def test_upload_onto_a_really_full_disk(tmp_path: Path) -> None:
    """The issue's case: ``min_free_mb = 0`` and the file system itself full (a tmpfs in a private namespace)."""
    proc = run_on_small_fs(REAL_DISK_SCRIPT, tmp_path, size_mb=8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    posted, final, stored, audited, says_full = map(int, proc.stdout.split())
    assert 500 not in (posted, final), proc.stderr[-3000:]
    assert (final, stored, audited, says_full) == (507, 0, 0, 1), proc.stdout
