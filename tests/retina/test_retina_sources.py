"""Each source end to end into the store: emulated camera (OpenCV), export folder, page upload.

The camera is the real adapter on an OpenCV video file / image sequence written by the emulator; the folder
is a real directory; the service is the daemon's real ``retina`` component with a real store.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from support.factories import MESSAGES, T0
from support.retina import build_tiny_model, fundus_jpeg, retina_config

from gateway.clock import FakeClock
from gateway.desk import RetinaCaptureRequest, RetinaProgress, RetinaTargetRequest, RetinaUploadRequest
from gateway.emulate import camera as emu
from gateway.errors import DeviceDisconnected, DeviceError, DeviceNotFound
from gateway.records import Eye, Field
from gateway.retina.intake import CaptureMeta
from gateway.retina.service import RetinaService
from gateway.retina.source import BOUNDARY, Camera, ExportFolder, eye_field_from_name, is_candidate, read_upload
from gateway.retina.triage import TriageModel
from gateway.runtime import Runtime
from gateway.store import captures as store_captures
from gateway.store import open_store
from gateway.store.db import Origin
from gateway.store.events import recent_events
from gateway.wire import contract

SIZE = (640, 480)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return emu.write_video(tmp_path / "camera.avi", emu.frames(6, SIZE, seed=10))


def make_runtime(tmp_path: Path, **retina: object) -> Runtime:
    config = retina_config(tmp_path, **retina)
    clock = FakeClock(T0)
    store = open_store(config.db_path, config.image_dir, clock=clock, origin=Origin("chc-test", "gw-test"))
    return Runtime(config=config, store=store, clock=clock)


@pytest.fixture
def model(tmp_path: Path) -> TriageModel:
    return TriageModel(build_tiny_model(tmp_path / "tiny.onnx"))


# -- camera -----------------------------------------------------------------------------------------------
def test_camera_capture_end_to_end_into_the_store(tmp_path: Path, video: Path, model: TriageModel) -> None:
    runtime = make_runtime(
        tmp_path, camera={"enabled": True, "device": str(video), "width": SIZE[0], "height": SIZE[1]}
    )
    service = RetinaService(runtime, model=model)
    meta = CaptureMeta(eye=Eye.LEFT, field=Field.DISC, source="camera", patient_id="P-7", operator="tech")
    result = service.capture(meta)
    row = store_captures.get_capture(runtime.store, result.stored.capture_id)
    assert row is not None and row.source == "camera" and (row.width, row.height) == SIZE
    assert row.quality_ok is True and row.decision in ("refer", "rescreen")
    assert result.stored.image_path.read_bytes()[:3] == b"\xff\xd8\xff"  # the JPEG the gateway encoded
    assert service.snapshot()["camera"]["resolution"] == "640x480"


def test_image_sequence_source(tmp_path: Path) -> None:
    pattern = emu.write_sequence(tmp_path / "seq", emu.frames(3, SIZE, seed=3))
    cam = Camera(pattern, width=SIZE[0], height=SIZE[1])
    assert cam.capture().shape == (SIZE[1], SIZE[0], 3)
    cam.close()


def test_resolution_is_verified(video: Path) -> None:
    cam = Camera(str(video), width=1920, height=1080)
    with pytest.raises(DeviceError, match="delivers 640x480, configured 1920x1080"):
        cam.open()
    assert not cam.is_open
    lenient = Camera(str(video), width=1920, height=1080, strict_resolution=False)
    assert lenient.capture().shape[:2] == (480, 640)


def test_no_camera_is_device_not_found(tmp_path: Path) -> None:
    with pytest.raises(DeviceNotFound):
        Camera(0, width=640, height=480).open()  # no /dev/video0 here (and never in CI)
    with pytest.raises(DeviceNotFound):
        Camera(str(tmp_path / "missing.avi")).open()


def test_camera_unplugged_mid_preview_ends_the_stream_cleanly(video: Path) -> None:
    cam = Camera(str(video), width=SIZE[0], height=SIZE[1])
    parts = list(cam.mjpeg(fps=100.0, max_side=320))  # 6 frames, then the "unplug" (no more frames)
    assert 5 <= len(parts) <= 7
    for part in parts:
        assert part.startswith(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n".encode())
        assert part.endswith(b"\xff\xd9\r\n")
    assert cam.last_error is not None and "stopped delivering frames" in cam.last_error
    with pytest.raises(DeviceDisconnected):
        list(cam.preview_frames(fps=100.0))  # reopened, drained again: the raw iterator raises
    cam.close()


def test_capture_after_unplug_is_a_clear_error_and_nothing_is_stored(tmp_path: Path, model: TriageModel) -> None:
    short = emu.write_video(tmp_path / "short.avi", emu.frames(2, SIZE, seed=1))
    runtime = make_runtime(tmp_path, camera={"enabled": True, "device": str(short), "width": 640, "height": 480})
    service = RetinaService(runtime, model=model)
    assert service.camera is not None
    service.camera.open()  # reads (and verifies) the first frame
    asyncio.run(service.handle(RetinaCaptureRequest(request_id="r1", eye=Eye.RIGHT, field=Field.MACULA)))
    asyncio.run(service.handle(RetinaCaptureRequest(request_id="r2", eye=Eye.RIGHT, field=Field.MACULA)))
    states = [runtime.progress.get(k) for k in ("r1", "r2")]
    assert states[0] is not None and states[0].state == "done"
    assert states[1] is not None and states[1].state == "failed"
    assert states[1].error is not None and states[1].error.type == "DeviceDisconnected"
    assert store_captures.count_captures(runtime.store) == 1


def test_looping_emulator_keeps_delivering(video: Path) -> None:
    cam = Camera(str(video), width=SIZE[0], height=SIZE[1], loop=True)
    assert len([cam.frame() for _ in range(15)]) == 15
    cam.close()


def test_preview_is_safe_from_another_thread_while_capturing(video: Path) -> None:
    cam = Camera(str(video), width=SIZE[0], height=SIZE[1], loop=True)
    got: list[bytes] = []
    worker = threading.Thread(target=lambda: got.extend(cam.mjpeg(fps=50.0, max_frames=10)))
    worker.start()
    frames = [cam.capture() for _ in range(5)]
    worker.join(10)
    assert len(got) == 10 and all(f.shape == (480, 640, 3) for f in frames)
    cam.close()


# -- export folder ----------------------------------------------------------------------------------------
def test_folder_candidates_and_names() -> None:
    assert is_candidate("IMG_0001.JPG") and is_candidate("a.tiff") and is_candidate("x.png")
    for name in (
        ".hidden.jpg",
        "photo.jpg.part",
        "photo.tmp",
        "photo.jpg~",
        "notes.txt",
        "~$x.jpg",
        "a.jpg.crdownload",
    ):
        assert not is_candidate(name), name
    assert eye_field_from_name("ZHANG_OD_disc.jpg") == (Eye.RIGHT, Field.DISC)
    assert eye_field_from_name("p001_L.jpg") == (Eye.LEFT, None)
    assert eye_field_from_name("20261123_left_macula.png") == (Eye.LEFT, Field.MACULA)
    assert eye_field_from_name("IMG_0001.jpg") == (None, None)
    assert eye_field_from_name("both_L_R.jpg") == (None, None)  # never guess a laterality


def test_folder_waits_until_a_file_stops_growing(tmp_path: Path) -> None:
    folder = ExportFolder(tmp_path, settle_s=2.0)
    target = tmp_path / "a_R.jpg"
    target.write_bytes(b"\xff\xd8\xff" + b"x" * 100)
    assert folder.poll(now=0.0) == []  # first sight
    with target.open("ab") as fh:
        fh.write(b"y" * 100)  # still being written
    assert folder.poll(now=1.0) == []
    assert folder.poll(now=2.5) == []  # size changed at t=1.0: not settled yet
    ready = folder.poll(now=3.1)
    assert [r.name for r in ready] == ["a_R.jpg"] and ready[0].size == 203
    assert folder.poll(now=10.0) == []  # returned once


def test_missing_folder_is_a_device_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceNotFound):
        ExportFolder(tmp_path / "unmounted").poll()


def test_folder_source_end_to_end_once_across_restarts(tmp_path: Path, model: TriageModel) -> None:
    export = tmp_path / "export"
    (export / "2026-11-23").mkdir(parents=True)
    retina = {"folder": {"enabled": True, "path": str(export), "settle_s": 0.0, "poll_interval_s": 0.05}}
    runtime = make_runtime(tmp_path, **retina)
    service = RetinaService(runtime, model=model)
    good = fundus_jpeg(seed=21)
    emu.export_slowly(export / "2026-11-23" / "P42_OS_macula.jpg", good, pieces=3, pause_s=0.01)
    (export / "scan.jpg.part").write_bytes(good[:1000])  # a partial file: never taken
    (export / ".thumbs.jpg").write_bytes(good)  # hidden: never taken
    (export / "broken_R.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG: refused, recorded
    (export / "no_eye.jpg").write_bytes(fundus_jpeg(seed=22))  # laterality unknown: refused, recorded
    service.poll_folder_once()  # first sight
    assert service.poll_folder_once() == 1
    rows = store_captures.list_captures(runtime.store)
    assert len(rows) == 1 and (rows[0].eye, rows[0].field, rows[0].source) == ("L", "macula", "folder")
    ledger = {r.name: r.outcome for r in store_captures.folder_ledger(runtime.store)}
    assert ledger["2026-11-23/P42_OS_macula.jpg"] == "stored"
    assert ledger["broken_R.jpg"].startswith("refused: JPEG is truncated")
    assert ledger["no_eye.jpg"].startswith("refused: laterality unknown")
    assert service.folder_refused == 2
    events = recent_events(runtime.store, min_level="warning")
    assert {e.kind for e in events} == {"capture_refused"}
    kept = [json.dumps(e.as_json()) for e in events]
    assert all("broken" not in text and "P42" not in text for text in kept)  # no file names
    # Restart: a new service on the same store takes nothing again.
    runtime.store.close()
    runtime2 = make_runtime(tmp_path, **retina)
    service2 = RetinaService(runtime2, model=model)
    service2.poll_folder_once()
    assert service2.poll_folder_once() == 0
    assert store_captures.count_captures(runtime2.store) == 1
    # The technician fixes the name at the desk: the renamed file is taken.
    (export / "no_eye.jpg").rename(export / "no_eye_R.jpg")
    service2.poll_folder_once()
    assert service2.poll_folder_once() == 1
    # A desk target supplies the eye for unnamed files.
    target = RetinaTargetRequest(request_id="t", eye=Eye.LEFT, field=Field.DISC, patient_id="P-9")
    asyncio.run(service2.handle(target))
    (export / "IMG_0002.jpg").write_bytes(fundus_jpeg(seed=23))
    service2.poll_folder_once()
    assert service2.poll_folder_once() == 1
    latest = store_captures.list_captures(runtime2.store, patient_id="P-9")
    assert len(latest) == 1 and (latest[0].eye, latest[0].field) == ("L", "disc")


def test_oversize_folder_file_is_refused_once(tmp_path: Path, model: TriageModel) -> None:
    export = tmp_path / "export"
    export.mkdir()
    retina = {"max_image_mb": 0.01, "folder": {"enabled": True, "path": str(export), "settle_s": 0.0}}
    runtime = make_runtime(tmp_path, **retina)
    (export / "huge_R.jpg").write_bytes(fundus_jpeg(seed=5))  # ~40 kB, above the 10 kB limit
    service = RetinaService(runtime, model=model)
    service.poll_folder_once()
    assert service.poll_folder_once() == 0 and service.folder_refused == 1
    ledger = store_captures.folder_ledger(runtime.store)
    assert len(ledger) == 1 and "limit" in ledger[0].outcome
    restarted = RetinaService(runtime, model=model)  # after a restart it is not refused (or logged) again
    restarted.poll_folder_once()
    assert restarted.poll_folder_once() == 0 and restarted.folder_refused == 0


def test_demo_video_plays_on_and_passes_the_gate(tmp_path: Path) -> None:
    from gateway.retina import quality

    video = emu.write_demo_video(tmp_path / "demo", size=(320, 240), distinct=2, fps=4)
    assert emu.write_demo_video(tmp_path / "demo", size=(320, 240), distinct=2, fps=4) == video  # reused
    cam = Camera(str(video), width=320, height=240, loop=True)
    frames = [cam.capture() for _ in range(20)]  # more than the video holds
    assert all(quality.assess(f).ok for f in frames[::5])
    cam.close()


def test_folder_watcher_runs_in_the_component(tmp_path: Path, model: TriageModel) -> None:
    export = tmp_path / "export"
    export.mkdir()
    runtime = make_runtime(
        tmp_path, folder={"enabled": True, "path": str(export), "settle_s": 0.0, "poll_interval_s": 0.02}
    )
    service = RetinaService(runtime, model=model)

    async def scenario() -> None:
        task = asyncio.create_task(service.run())
        (export / "x_R.png").write_bytes(emu.encode(emu.synthetic_fundus(4, SIZE), ".png"))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if store_captures.count_captures(runtime.store):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert store_captures.count_captures(runtime.store) == 1 and service.healthy()


# -- upload -----------------------------------------------------------------------------------------------
def test_upload_end_to_end_through_the_desk_bus(tmp_path: Path, model: TriageModel) -> None:
    runtime = make_runtime(tmp_path)
    service = RetinaService(runtime, model=model)
    data = fundus_jpeg(seed=31)

    async def scenario() -> None:
        runtime.desk.bind(asyncio.get_running_loop())
        task = asyncio.create_task(service.run())
        await asyncio.sleep(0)
        upload = RetinaUploadRequest(request_id="u1", data=data, eye=Eye.RIGHT, field=Field.MACULA, patient_id="P-1",
                                     session_id="s1", operator="nurse")  # fmt: skip
        runtime.desk.submit(upload)
        runtime.desk.submit(replace(upload, request_id="u2", data=data[:3000]))
        for _ in range(300):
            await asyncio.sleep(0.01)
            states = [getattr(runtime.progress.get(k), "state", None) for k in ("u1", "u2")]
            if "working" not in states and None not in states:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    ok, bad = runtime.progress.get("u1"), runtime.progress.get("u2")
    assert isinstance(ok, RetinaProgress) and ok.state == "done" and ok.outcome is not None
    outcome = ok.outcome
    assert outcome.quality_ok is True
    assert outcome.model_version == "tiny-test-1" and outcome.decision in ("refer", "rescreen")
    assert outcome.eye == "R" and outcome.eye_suggested in ("L", "R", None)
    assert outcome.eye_differs is (outcome.eye_suggested == "L")
    assert bad is not None and bad.state == "failed" and bad.error is not None and "truncated" in bad.error.message
    rows = store_captures.list_captures(runtime.store, session_id="s1")
    assert len(rows) == 1 and rows[0].operator == "nurse" and rows[0].source == "upload"


def test_upload_without_eye_is_refused(tmp_path: Path, model: TriageModel) -> None:
    runtime = make_runtime(tmp_path)
    service = RetinaService(runtime, model=model)
    asyncio.run(service.handle(RetinaUploadRequest(request_id="u", data=fundus_jpeg())))
    entry = runtime.progress.get("u")
    assert entry is not None and entry.state == "failed"
    assert entry.error is not None and "choose the eye" in entry.error.message


def test_read_upload_limits(tmp_path: Path) -> None:
    import io

    from gateway.errors import CaptureError

    assert read_upload(io.BytesIO(b"abc"), 10) == b"abc"
    with pytest.raises(CaptureError, match="larger"):
        read_upload(io.BytesIO(b"x" * 11), 10)
    with pytest.raises(CaptureError, match="empty"):
        read_upload(io.BytesIO(b""), 10)


def test_service_without_model_keeps_taking_photos(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, model={"path": str(tmp_path / "absent.onnx")})
    service = RetinaService(runtime)
    assert service.model is None and "not found" in service.snapshot()["model"]["error"]
    result = service.intake.take(fundus_jpeg(seed=40), CaptureMeta(eye=Eye.RIGHT, field=Field.DISC, source="upload"))
    row = store_captures.get_capture(runtime.store, result.stored.capture_id)
    assert row is not None and row.decision is None and row.quality_ok is True
    (payload,) = runtime.store.query(f"SELECT payload FROM {MESSAGES} WHERE kind = 'capture'")
    doc = json.loads(payload["payload"])
    contract.validate(contract.SCHEMA_CAPTURE, doc)
    assert doc["triage"] is None


def test_daemon_factory_gives_the_retina_component(tmp_path: Path) -> None:
    from gateway.retina.service import components
    from gateway.runtime import Component, Snapshotting

    runtime = make_runtime(tmp_path, model={"path": str(build_tiny_model(tmp_path / "m.onnx"))})
    (service,) = components(runtime)
    assert isinstance(service, Component) and isinstance(service, Snapshotting) and service.name == "retina"
    snap = service.snapshot()
    assert snap["model"]["model_version"] == "tiny-test-1" and snap["camera"] is None and snap["folder"] is None
    json.dumps(snap)  # the status page serialises it
