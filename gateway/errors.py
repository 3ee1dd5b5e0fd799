"""The gateway's one exception tree.

Callers branch on the type and on attributes, never on message text::

    GatewayError
    ├── ConfigError          .problems: list[(key_path, message)]        config.py only
    ├── ProtocolError        a peer sent bytes we cannot accept           pure codecs raise only this family
    │   ├── FrameError       length / checksum / framing (.wire, .calculated)
    │   ├── RecordError      well-framed record with impossible content
    │   ├── LinkControlError a link layer's sequence / acknowledge bits out of step (.field, .expected, .received)
    │   └── ContractError    platform message that fails the contract
    ├── DeviceError          talking to a device failed, not the bytes' fault   .device_id
    │   ├── DeviceNotFound
    │   ├── DeviceTimeout
    │   └── DeviceDisconnected   .records_kept
    ├── CaptureError         unreadable / oversize / unsupported image
    ├── ModelError           model missing, wrong version or input shape
    │   ├── ModelInputMismatch  the ONNX input is not the shape the sidecar names: .shape, .expected
    │   └── ModelRefused     ``gateway model install/rollback`` refused a model: .reason (RefusalReason), .detail
    ├── LabelsError          ``gateway model validate``: the labels CSV cannot be used (.path, .line, .problem)
    ├── DeskUnavailable      no running component serves this desk request   .request_type
    ├── StoreError           SQLite or image directory
    │   ├── DiskFull
    │   ├── IntakeRefused    intake stopped before the disk fills
    │   └── StoreCannotOpen  permissions, owner, read-only: .path, .owner, .mode, .access, .user (not corruption)
    └── ForwardError         the broker link failed
        ├── BrokerAuthError      credentials refused
        ├── BrokerTLSError       certificate or handshake failure
        ├── BrokerUnavailable    unreachable, refused connection, timed out
        └── MessageRejected      the broker refused one message (e.g. too large)

Adapters translate foreign exceptions (BleakError, SerialException, sqlite3.Error, paho reason codes) into
this tree exactly once, with ``raise ... from exc``. Where an error outlives its ``except`` block (a download's
result, a progress board, a status snapshot) it travels as :class:`ErrorInfo`: its type's name and its message
as data, never a ``"Type: message"`` string to be split apart again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception kept as data once it has been handled: ``type`` is its class name, ``message`` its text.

    ``str()`` gives ``"Type: message"``, the form logs and the stored ``last_error`` / ``error`` columns use.
    """

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        """The type name and message of ``exc``."""
        return cls(type(exc).__name__, str(exc))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; ``problems`` lists every ``(key_path, message)``."""

    def __init__(self, problems: Sequence[tuple[str, str]], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "; ".join(f"{key}: {msg}" for key, msg in self.problems)
        super().__init__(f"{source}: {lines}")


class ProtocolError(GatewayError):
    """A peer sent bytes (or a message) that we cannot accept."""


class FrameError(ProtocolError):
    """Framing, length or checksum is wrong. ``wire`` and ``calculated`` carry checksums when relevant."""

    def __init__(self, message: str, *, wire: int | None = None, calculated: int | None = None) -> None:
        self.wire = wire
        self.calculated = calculated
        if wire is not None and calculated is not None:
            message = f"{message} (wire 0x{wire:04x}, calculated 0x{calculated:04x})"
        super().__init__(message)


class RecordError(ProtocolError):
    """A well-framed record carries impossible content (month 13, unknown unit code...)."""


class LinkControlError(ProtocolError):
    """A link layer's control bits are out of step with ours (LifeScan binary link: sequence, expect-receive).

    ``field`` names the bit (``"sequence"``, ``"expect_receive"``, ``"disconnect"``), ``expected`` and
    ``received`` its values, ``control`` the whole link-control byte as received.
    """

    def __init__(self, message: str, *, field: str, expected: int, received: int, control: int) -> None:
        self.field = field
        self.expected = expected
        self.received = received
        self.control = control
        super().__init__(f"{message} ({field}: expected {expected}, received {received}; control 0x{control:02x})")


class ContractError(ProtocolError):
    """A platform message (ack, command) or payload does not satisfy the message contract.

    ``what``: the kind of message (``ack``, ``referral``, ``downlink`` ...); ``where``: the field or JSON path
    at fault, or a check's name in parentheses (``(size)``, ``(json)``); ``reason``: why, in words that never
    quote the offending value (downlink values may be patient data, or crafted to forge a log line).
    """

    def __init__(self, reason: str, *, what: str = "message", where: str = "") -> None:
        self.reason = reason
        self.what = what
        self.where = where
        super().__init__(f"{what}: {where}: {reason}" if where else f"{what}: {reason}")


class DeviceError(GatewayError):
    """Talking to a device failed for reasons other than the bytes it sent."""

    def __init__(self, message: str, *, device_id: str | None = None) -> None:
        self.device_id = device_id
        super().__init__(message)


class DeviceNotFound(DeviceError):
    """The device is not there (not advertising, port missing)."""


class DeviceTimeout(DeviceError):
    """The device did not answer in time."""


class DeviceDisconnected(DeviceError):
    """The link dropped part way; ``records_kept`` says how many records were already stored."""

    def __init__(self, message: str, *, device_id: str | None = None, records_kept: int = 0) -> None:
        self.records_kept = records_kept
        super().__init__(message, device_id=device_id)


class CaptureError(GatewayError):
    """An image could not be accepted: unreadable, corrupt, oversize or unsupported."""


class ModelError(GatewayError):
    """The triage model is missing, of the wrong version or has the wrong input shape."""


class DeskUnavailable(GatewayError):
    """No running component serves this kind of desk request (e.g. Bluetooth meters disabled in config).

    ``request_type``: the request's class name (``BleSyncRequest``, ``RetinaCaptureRequest`` ...).
    """

    def __init__(self, message: str, *, request_type: str) -> None:
        self.request_type = request_type
        super().__init__(message)


class ModelInputMismatch(ModelError):
    """The ONNX model's input shape is not ``expected`` (from its sidecar); ``shape`` is what it declares."""

    def __init__(self, message: str, *, shape: list[object], expected: list[object]) -> None:
        self.shape = shape
        self.expected = expected
        super().__init__(message)


class RefusalReason(StrEnum):
    """Why a model was not installed (or not rolled back to)."""

    UNREADABLE = "unreadable"
    """The ONNX file, its sidecar or its signature cannot be read."""
    SIDECAR_INVALID = "sidecar_invalid"
    """The sidecar JSON is not valid or lacks a required key."""
    SHA256_MISMATCH = "sha256_mismatch"
    """The ONNX file is not the one the sidecar pins (tampered or truncated)."""
    SIGNATURE_MISSING = "signature_missing"
    """A signing key is configured but the model comes without a signature."""
    SIGNATURE_INVALID = "signature_invalid"
    """The signature does not verify with the configured key."""
    INPUT_CONTRACT = "input_contract"
    """The model's input (name, shape, type) is not what the sidecar and the gateway's preprocessing expect."""
    NOT_LOADABLE = "not_loadable"
    """onnxruntime cannot load or run the model."""
    NO_PREVIOUS = "no_previous"
    """Rollback asked for, but no previous model is kept."""


class ModelRefused(ModelError):
    """A model was refused by ``gateway model install`` (or rollback); the running model stays.

    ``reason``: a :class:`RefusalReason`; ``detail``: what exactly did not match (no patient data).
    """

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"model refused ({reason}): {detail}")


class LabelsError(GatewayError):
    """The labels CSV of a local validation cannot be used: ``line`` (1-based, 0 for the file as a whole)."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(f"{path.name} line {line}: {problem}")


class StoreError(GatewayError):
    """The local store (SQLite database or image directory) failed."""


class DiskFull(StoreError):
    """The file system holding the store is full."""


class IntakeRefused(StoreError):
    """New clinical intake is refused because free space is below the configured floor."""


class StoreCannotOpen(StoreError):
    """The store's file or directory is there, but this process may not use it: not corruption.

    A permission, ownership or read-only problem (a database or WAL file left by a command run as root, a card
    mounted read-only). The data is intact and stays where it is; someone must give it back to the service.

    ``path``: the file or directory refused; ``owner`` and ``mode``: its owner's name and permission bits;
    ``access``: what was refused (``"read"``, ``"write"``, ``"create files in"``, ``"enter"``); ``user``: who we
    run as; ``reason``: the system's word for it ("Permission denied", "Read-only file system").
    """

    def __init__(self, *, path: Path, owner: str, mode: int, access: str, user: str, reason: str) -> None:
        self.path = path
        self.owner = owner
        self.mode = mode
        self.access = access
        self.user = user
        self.reason = reason
        super().__init__(
            f"cannot open the store: {user} may not {access} {path} (owner {owner}, mode {mode:04o}): {reason}; "
            "it is not corrupt and was left in place: give it back to the service user (docs/operations.md, §8)"
        )


class ForwardError(GatewayError):
    """The link to the platform's broker failed."""


class BrokerAuthError(ForwardError):
    """The broker refused our credentials or client certificate."""


class BrokerTLSError(ForwardError):
    """The TLS handshake failed (untrusted certificate, wrong host name, bad key)."""


class BrokerUnavailable(ForwardError):
    """The broker cannot be reached (DNS, refused, timed out)."""


class MessageRejected(ForwardError):
    """The broker refused one message; ``reason`` is its reason string (e.g. 'Packet too large')."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)
