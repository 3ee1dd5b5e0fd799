"""The desk protocol: typed requests from the pages to the core, and the typed records the core posts back.

The pages (web threads) and the areas (asyncio core) meet through the runtime's
:class:`~gateway.runtime.DeskBus` and boards; everything that crosses is defined here, once:

- **requests**, one frozen dataclass per desk action, routed by their type (a component declares the types
  it serves): :class:`SerialSyncRequest` / :class:`BleSyncRequest` (download a meter; the type names the
  transport, so a disabled transport is refused at once), :class:`RetinaTargetRequest`,
  :class:`RetinaCaptureRequest`, :class:`RetinaUploadRequest`;
- **progress** on ``runtime.progress`` (request id -> :class:`MeterProgress` or :class:`RetinaProgress`):
  a :class:`DeskState`, n of N, and an error as :class:`~gateway.errors.ErrorInfo` (data, never a string to
  split), plus each kind's own fields;
- **devices** on ``runtime.devices`` (device id -> :class:`DeviceEntry`, no patient data);
- :class:`CameraPreview`, the interface the retina component offers the pages for the live preview.

Pure values: nothing here touches a device, the store or the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol

from gateway.errors import ErrorInfo
from gateway.records import Eye, Field, QualityGeometry, TriageDecision
from gateway.store.audit import AuditEntry


class DeskKind(StrEnum):
    """Which desk a session or request belongs to (the nurse's meters, the technician's photos)."""

    METER = "meter"
    RETINA = "retina"


class DeskState(StrEnum):
    """Where a desk session or request stands; the last three are final."""

    QUEUED = "queued"
    CONNECTING = "connecting"
    RUNNING = "running"
    WORKING = "working"
    DONE = "done"
    INTERRUPTED = "interrupted"
    """A download cut short (link lost, meter silent): what arrived is kept."""
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """True once nothing more will happen."""
        return self in _FINISHED


_FINISHED = frozenset({DeskState.DONE, DeskState.INTERRUPTED, DeskState.FAILED})


# -- requests ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class DeskRequest:
    """Base of every desk request: its id (the progress key the page polls) and who asked."""

    request_id: str
    operator: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterSyncRequest(DeskRequest):
    """Download the meter at ``target`` (a port, a Bluetooth address or a meter id) for ``patient_id``.

    Never sent as such: :class:`SerialSyncRequest` and :class:`BleSyncRequest` name the transport, so each
    is served only while its transport is enabled.
    """

    target: str
    patient_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialSyncRequest(MeterSyncRequest):
    """A meter download over a USB-serial cable."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BleSyncRequest(MeterSyncRequest):
    """A meter (or blood pressure cuff) download over Bluetooth LE.

    ``cuff_user``: on a multi-user cuff, the cuff user the nurse said is this patient: only that user's
    measurements are the patient's, the others are kept without a patient (None: every one is the patient's).
    """

    cuff_user: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetinaTargetRequest(DeskRequest):
    """Who and what the next camera and export-folder photos are (all None: clear the target)."""

    patient_id: str | None = None
    eye: Eye | None = None
    field: Field | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetinaPhotoRequest(DeskRequest):
    """What a photo from the desk is of. None fields fall back to the desk's current target.

    ``audit``: the desk action, recorded in the transaction that stores the photo (or not at all).
    """

    patient_id: str | None = None
    eye: Eye | None = None
    field: Field | None = None
    session_id: str | None = None
    audit: AuditEntry | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetinaCaptureRequest(RetinaPhotoRequest):
    """Take a photo with the camera now."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetinaUploadRequest(RetinaPhotoRequest):
    """A photo file uploaded at the desk."""

    data: bytes = b""


# -- progress ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class DeskProgress:
    """A desk session or request as the core reports it: state, n of N (``total`` None while unknown), and
    the error that ended it."""

    kind: ClassVar[DeskKind]
    state: DeskState
    done: int = 0
    total: int | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterProgress(DeskProgress):
    """A meter download: the target asked for, the meter that answered, and what was stored."""

    kind: ClassVar[DeskKind] = DeskKind.METER
    target: str | None = None
    meter_id: str | None = None
    added: int = 0
    duplicates: int = 0
    other_users: int = 0
    """Measurements of other users of a multi-user cuff: kept, not this patient's."""
    shared_cuff: bool = False
    """No cuff user was chosen for a cuff that names several users: none of its measurements is this patient's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetinaOutcome:
    """A stored photo as the technician's page shows it (the quality verdict and the advisory triage)."""

    capture_id: str
    duplicate: bool
    eye: Eye
    eye_suggested: Eye | None
    """The eye the photo looks like, from where the optic disc is (None: cannot tell)."""
    quality_ok: bool
    reasons: tuple[str, ...]
    decision: TriageDecision | None
    referable_probability: float | None
    model_version: str | None
    triage_error: str | None
    geometry: QualityGeometry | None = None
    """Where the gate saw its reasons (the page's overlay on the photo)."""

    @property
    def eye_differs(self) -> bool:
        """The photo looks like the other eye: the page shows it as a check."""
        return self.eye_suggested is not None and self.eye_suggested is not self.eye


@dataclass(frozen=True, slots=True, kw_only=True)
class RetinaProgress(DeskProgress):
    """A capture or upload: the outcome once done; ``storage_full`` when it failed because the store is full
    or below its free-space floor (the page says so in its own language)."""

    kind: ClassVar[DeskKind] = DeskKind.RETINA
    outcome: RetinaOutcome | None = None
    storage_full: bool = False


# -- devices -----------------------------------------------------------------------------------------------
class DeviceKind(StrEnum):
    """What a device on the devices board is."""

    METER = "meter"
    CAMERA = "camera"


class DeviceState(StrEnum):
    """A device's state on the devices board."""

    CONNECTED = "connected"
    """Identified (a serial meter on its cable); not downloading."""
    RUNNING = "running"
    DONE = "done"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    UNPLUGGED = "unplugged"
    UNREACHABLE = "unreachable"
    """A Bluetooth meter that could not be connected."""
    OK = "ok"
    """A camera that delivered its last frame."""

    @classmethod
    def of_download(cls, state: DeskState) -> DeviceState:
        """The meter's state while (or after) it is downloaded."""
        return _DOWNLOAD_STATES.get(state, cls.RUNNING)


_DOWNLOAD_STATES = {
    DeskState.DONE: DeviceState.DONE,
    DeskState.INTERRUPTED: DeviceState.INTERRUPTED,
    DeskState.FAILED: DeviceState.FAILED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceEntry:
    """A device the core has seen (no patient data). ``last_error`` is the error of its last attempt."""

    kind: DeviceKind
    state: DeviceState
    transport: str | None = None
    family: str | None = None
    port: str | None = None
    address: str | None = None
    last_error: ErrorInfo | None = None


# -- camera preview ----------------------------------------------------------------------------------------
class CameraPreview(Protocol):
    """The camera's live preview, as the retina component offers it on the runtime (thread-safe)."""

    @property
    def preview_type(self) -> str:
        """The stream's content type (multipart MJPEG)."""
        ...

    def preview(self, max_frames: int | None = None) -> Iterator[bytes]:
        """The preview's parts; never raises (a camera that goes away ends it with a frame saying so)."""
        ...
