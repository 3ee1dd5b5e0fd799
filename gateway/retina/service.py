"""The daemon's retina component: export-folder watcher, camera captures and uploads from the desk.

One component, ``retina``, owns the loaded triage model (one onnxruntime session for the daemon's life),
the camera and the folder watcher. It serves the desk requests of :mod:`gateway.desk`, routed to it by type:

=========================  ==========================================================================
request                    what it does
=========================  ==========================================================================
``RetinaTargetRequest``    who and what the next camera/folder photos are (patient, eye, field, session;
                           all None clears it)
``RetinaCaptureRequest``   take a photo with the camera now (eye, field, patient, session: None falls back
                           to the target)
``RetinaUploadRequest``    a photo from the page (``data``), as for a capture
=========================  ==========================================================================

Capture and upload requests may carry ``audit`` (an :class:`~gateway.store.audit.AuditEntry`): the desk action,
recorded in the transaction that stores the photo.

Results go to ``runtime.progress[request_id]`` as :class:`~gateway.desk.RetinaProgress` for the page to poll:
``working``, then ``done`` with the :class:`~gateway.desk.RetinaOutcome` (quality verdict and reasons, advisory
triage, duplicate, the eye the photo looks like) or ``failed`` with the error as data (``storage_full`` when the
store is full or below its free-space floor). The live preview for the page is offered on the runtime
(``runtime.camera_preview``, :class:`~gateway.desk.CameraPreview`): :meth:`RetinaService.preview`, thread-safe,
never raises.

Nothing here crashes the daemon on bad input: a bad photo is a ``failed`` entry (and, for a folder file,
a ledger row and an event so it is not retried forever); a missing model leaves intake running without
triage and says so in the status snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.desk import (
    DeskRequest,
    DeskState,
    DeviceEntry,
    DeviceKind,
    DeviceState,
    RetinaCaptureRequest,
    RetinaOutcome,
    RetinaPhotoRequest,
    RetinaProgress,
    RetinaTargetRequest,
    RetinaUploadRequest,
)
from gateway.errors import (
    CaptureError,
    DeviceError,
    DiskFull,
    ErrorInfo,
    GatewayError,
    IntakeRefused,
    StoreError,
)
from gateway.records import Eye, Field
from gateway.retina import imaging, quality
from gateway.retina.imaging import MIB
from gateway.retina.intake import CaptureMeta, IntakeResult, RetinaIntake, Source
from gateway.retina.model_store import ActiveModel, ModelStore, model_root
from gateway.retina.source import MJPEG_CONTENT_TYPE, Camera, ExportFolder, ReadyFile, eye_field_from_name
from gateway.retina.triage import TriageModel
from gateway.runtime import Component, Runtime
from gateway.store import captures as store_captures
from gateway.store.events import add_event

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """The desk's current patient, eye and field for camera and folder photos."""

    patient_id: str | None = None
    eye: Eye | None = None
    field: Field | None = None
    session_id: str | None = None
    operator: str | None = None


def _name_digest(name: str) -> str:
    # Export file names can hold patient names: logs and events get a digest, never the name.
    return hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:10]


def active_model(runtime: Runtime) -> ActiveModel:
    """The daemon's model holder: the configured path, else the installed (``gateway model install``) or shipped one."""
    cfg = runtime.config.retina.model
    store = ModelStore(model_root(runtime.config.gateway.state_dir), signing_key=cfg.signing_key_file)
    return ActiveModel(store, cfg.path, threads=cfg.threads, low_memory=cfg.low_memory)


class RetinaService:
    """Component ``retina``: folder watching, desk captures and uploads, the camera preview."""

    name = "retina"
    serves = (RetinaTargetRequest, RetinaCaptureRequest, RetinaUploadRequest)
    """The desk requests this component serves."""
    preview_type = MJPEG_CONTENT_TYPE
    """What :meth:`preview` yields (the camera preview the component offers on the runtime)."""

    def __init__(self, runtime: Runtime, *, model: TriageModel | None = None, load: bool = True) -> None:
        self.runtime = runtime
        cfg = runtime.config.retina
        self.model_error: str | None = None
        self.active = active_model(runtime)
        # Installs and rollbacks are followed only when the component loads its model itself: a model given by
        # the caller, or load=False (no model: pages and tests without triage), stays as it is.
        self._follow_installs = model is None and load
        if model is None and load:
            model, self.model_error = self.active.load(), self.active.error
        elif model is None:
            self.model_error = "not loaded"
        self.model = model
        self.intake = RetinaIntake(
            runtime.store,
            model,
            chunk_size=runtime.config.forward.chunk_size,
            max_bytes=int(cfg.max_image_mb * MIB),
            max_pixels=cfg.max_pixels,
        )
        cam = cfg.camera
        self.camera: Camera | None = None
        if cam.enabled:
            self.camera = Camera(
                cam.device,
                width=cam.width,
                height=cam.height,
                fourcc=cam.fourcc,
                strict_resolution=cam.strict_resolution,
                loop=cam.loop,
            )
        folder = cfg.folder
        self.folder: ExportFolder | None = (
            ExportFolder(folder.path, settle_s=folder.settle_s, recursive=folder.recursive)
            if folder.enabled and folder.path is not None
            else None
        )
        self.target = Target()
        self.folder_error: str | None = None
        self.folder_taken = 0
        self.folder_refused = 0
        self._beat = runtime.clock.monotonic()
        runtime.camera_preview = self  # the pages reach the preview through this typed interface only

    def model_problem(self) -> str | None:
        """Why the triage model is not loaded (photos then go without triage), or None (the health model)."""
        return None if self.model is not None else (self.model_error or "not loaded")

    # -- component ----------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """The folder loop (or the request loop) has run recently."""
        slack = max(60.0, 10 * self.runtime.config.retina.folder.poll_interval_s)
        return self.runtime.clock.monotonic() - self._beat < slack

    def snapshot(self) -> dict[str, Any]:
        """State for the status page (no patient data)."""
        model = self.model.info.describe() if self.model is not None else {"error": self.model_error}
        model.update(self.active.installed() if self.model is self.active.model else {})
        return {
            "model": model,
            "camera": None
            if self.camera is None
            else {
                "device": self.camera.device_id,
                "open": self.camera.is_open,
                "resolution": None if self.camera.resolution is None else "x".join(map(str, self.camera.resolution)),
                "last_error": self.camera.last_error,
            },
            "folder": None
            if self.folder is None
            else {"taken": self.folder_taken, "refused": self.folder_refused, "error": self.folder_error},
            "captures": dict(self.intake.counts),
        }

    async def run(self) -> None:
        """Serve desk requests and poll the export folder until cancelled."""
        desk = self.runtime.desk
        queues = [desk.queue(t) for t in self.serves]
        try:
            async with asyncio.TaskGroup() as group:
                for queue in queues:
                    group.create_task(self._serve_queue(queue))
                if self._follow_installs:
                    group.create_task(self._watch_model())
                if self.folder is not None:
                    group.create_task(self._watch_folder())
                else:
                    group.create_task(self._heartbeat())
        finally:
            if self.camera is not None:
                self.camera.close()

    async def _watch_model(self) -> None:
        while True:
            await asyncio.sleep(self.runtime.config.retina.model.watch_interval_s)
            await asyncio.to_thread(self.reload_model_if_changed)

    def reload_model_if_changed(self) -> bool:
        """Switch to a newly installed or rolled-back model between captures (a capture in flight keeps its own)."""
        if not self.active.refresh():
            return False
        self.model = self.intake.model = self.active.model
        self.model_error = None
        return True

    async def _heartbeat(self) -> None:
        while True:
            self._beat = self.runtime.clock.monotonic()
            await asyncio.sleep(5.0)

    async def _serve_queue(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            request: DeskRequest = await queue.get()
            try:
                await self.handle(request)
            except Exception:  # a bug in one request must not stop the desk for everyone
                _logger.exception("retina request %s failed (bug)", type(request).__name__)
                failed = RetinaProgress(state=DeskState.FAILED, error=ErrorInfo("InternalError", "internal error"))
                self.runtime.progress.put(request.request_id, failed)

    # -- desk ---------------------------------------------------------------------------------------
    async def handle(self, request: DeskRequest) -> None:
        """Serve one desk request; the outcome goes to ``runtime.progress[request.request_id]``."""
        progress = self.runtime.progress
        if isinstance(request, RetinaTargetRequest):
            self.target = Target(request.patient_id, request.eye, request.field, request.session_id, request.operator)
            progress.put(request.request_id, RetinaProgress(state=DeskState.DONE))
            return
        progress.put(request.request_id, RetinaProgress(state=DeskState.WORKING))
        try:
            if isinstance(request, RetinaCaptureRequest):
                result = await asyncio.to_thread(self.capture, self._meta(request, "camera"))
            elif isinstance(request, RetinaUploadRequest):
                meta = self._meta(request, "upload")
                if not request.data:
                    raise CaptureError("no image in the upload")
                result = await asyncio.to_thread(self.intake.take, request.data, meta)
            else:
                raise CaptureError(f"not a retina request: {type(request).__name__}")
        except GatewayError as exc:
            _logger.warning("retina %s failed: %s: %s", type(request).__name__, type(exc).__name__, exc)
            failed = RetinaProgress(
                state=DeskState.FAILED,
                error=ErrorInfo.of(exc),
                storage_full=isinstance(exc, DiskFull | IntakeRefused),  # the page says so in its language
            )
            progress.put(request.request_id, failed)
            return
        progress.put(request.request_id, RetinaProgress(state=DeskState.DONE, outcome=describe_result(result)))

    def _meta(self, request: RetinaPhotoRequest, source: Source) -> CaptureMeta:
        target = self.target
        eye = request.eye or target.eye
        field = request.field or target.field
        if eye is None or field is None:
            raise CaptureError("choose the eye (L/R) and the field (disc/macula) before taking the photo")
        return CaptureMeta(
            eye=eye,
            field=field,
            source=source,
            patient_id=request.patient_id or target.patient_id,
            session_id=request.session_id or target.session_id,
            operator=request.operator or target.operator,
            audit=request.audit,
        )

    def capture(self, meta: CaptureMeta) -> IntakeResult:
        """Take one photo with the camera now and store it (blocking; the core calls it in a thread)."""
        if self.camera is None:
            raise DeviceError("no camera is configured (retina.camera.enabled)")
        frame = self.camera.capture()
        self.runtime.devices.put(self.camera.device_id, DeviceEntry(kind=DeviceKind.CAMERA, state=DeviceState.OK))
        return self.intake.take_frame(frame, meta, jpeg_quality=self.runtime.config.retina.camera.jpeg_quality)

    def preview(self, max_frames: int | None = None) -> Iterator[bytes]:
        """The camera's live MJPEG preview parts (see ``source.MJPEG_CONTENT_TYPE``); never raises."""
        cam = self.runtime.config.retina.camera
        if self.camera is None:
            return iter(())
        return self.camera.mjpeg(cam.preview_fps, cam.preview_max_side, max_frames=max_frames)

    # -- export folder ------------------------------------------------------------------------------
    async def _watch_folder(self) -> None:
        assert self.folder is not None
        interval = self.runtime.config.retina.folder.poll_interval_s
        while True:
            self._beat = self.runtime.clock.monotonic()
            await asyncio.to_thread(self.poll_folder_once)
            await asyncio.sleep(interval)

    def poll_folder_once(self) -> int:
        """Scan the export folder once and take every settled new file; return how many were stored."""
        assert self.folder is not None
        try:
            ready = self.folder.poll()
        except DeviceError as exc:
            if self.folder_error != str(exc):
                _logger.warning("export folder: %s", exc)
                with contextlib.suppress(GatewayError):
                    add_event(self.runtime.store, "folder_unavailable", str(exc), level="warning")
            self.folder_error = str(exc)
            return 0
        self.folder_error = None
        stored = 0
        for item in ready:
            stored += self._take_file(item)
        return stored

    def _take_file(self, item: ReadyFile) -> int:
        assert self.folder is not None
        store = self.runtime.store
        max_bytes = int(self.runtime.config.retina.max_image_mb * MIB)
        digest = _name_digest(item.name)
        # A file refused before it could be read is remembered by its size and time instead of its hash.
        unread = f"unread:{item.size}:{item.mtime_ns}"
        try:
            if store_captures.folder_file_seen(store, item.name, unread):
                return 0
            data = self.folder.read(item, max_bytes)
        except CaptureError as exc:
            self._refuse(item.name, unread, item.size, str(exc), digest)
            return 0
        except StoreError as exc:
            _logger.error("export file #%s not checked: %s: %s", digest, type(exc).__name__, exc)
            self.folder.forget(item)
            return 0
        except DeviceError as exc:
            _logger.warning("export file #%s: %s", digest, exc)
            return 0
        sha = imaging.sha256_hex(data)
        try:
            if store_captures.folder_file_seen(store, item.name, sha):
                return 0
            eye, field = eye_field_from_name(item.name)
            target = self.target
            eye = eye or target.eye
            field = field or target.field or Field(self.runtime.config.retina.folder.default_field)
            if eye is None:
                self._refuse(item.name, sha, len(data), "laterality unknown: name the file with _L/_R (or OD/OS), "
                             "or choose the eye at the desk first", digest)  # fmt: skip
                return 0
            meta = CaptureMeta(eye=eye, field=field, source="folder", patient_id=target.patient_id,
                               session_id=target.session_id, operator=target.operator)  # fmt: skip
            self.intake.take(data, meta, folder_file=item.name)
        except CaptureError as exc:
            self._refuse(item.name, sha, len(data), str(exc), digest)
            return 0
        except StoreError as exc:  # disk nearly full, database busy: try the file again later
            _logger.error("export file #%s not stored: %s: %s", digest, type(exc).__name__, exc)
            self.folder.forget(item)
            return 0
        self.folder_taken += 1
        return 1

    def _refuse(self, name: str, sha: str, size: int, reason: str, digest: str) -> None:
        self.folder_refused += 1
        _logger.warning("export file #%s refused: %s", digest, reason)
        with contextlib.suppress(GatewayError):
            store_captures.record_folder_refusal(self.runtime.store, name, sha, size, reason)
            add_event(self.runtime.store, "capture_refused", f"export file refused: {reason}", level="warning",
                      detail={"file": digest, "source": "folder"})  # fmt: skip


def describe_result(result: IntakeResult) -> RetinaOutcome:
    """A stored capture as the page shows it."""
    capture, triage = result.capture, result.capture.triage
    return RetinaOutcome(
        capture_id=result.stored.capture_id,
        duplicate=result.stored.duplicate,
        eye=capture.eye,
        eye_suggested=quality.suggest_eye(capture.quality.metrics),
        quality_ok=capture.quality.ok,
        reasons=tuple(capture.quality.reasons),
        decision=None if triage is None else triage.decision,
        referable_probability=None if triage is None else triage.referable_probability,
        model_version=None if triage is None else triage.model_version,
        triage_error=result.triage_error,
        geometry=capture.quality.geometry,
    )


def components(runtime: Runtime) -> list[Component]:
    """The retina component (always: page uploads need it even without camera or folder)."""
    return [RetinaService(runtime)]
