"""Triage models as managed artefacts: install, roll back, list; the daemon follows the active one.

Layout under ``<state_dir>/models/``::

    <version>-<sha12>/model.onnx      the ONNX file, byte for byte as published
    <version>-<sha12>/model.json      its sidecar (version, sha256, input contract, thresholds, validation)
    <version>-<sha12>/model.json.sig  the detached Ed25519 signature over the sidecar, when it came with one
    <version>-<sha12>/installed.json  when and from what it was installed, whether the signature was verified
    active   -> <version>-<sha12>     symlink: the model the daemon uses
    previous -> <version>-<sha12>     symlink: the one ``gateway model rollback`` goes back to

**Checks** (:func:`verify`), in order, each a :class:`~gateway.errors.ModelRefused` with its
:class:`~gateway.errors.RefusalReason`: the sidecar parses and has every key; with a signing key configured
(``retina.model.signing_key_file``) the signature over the sidecar verifies (the sidecar pins the ONNX file's
SHA-256, so one signature covers both); the file's SHA-256 is the sidecar's; the input contract (name,
shape, element type) is what the sidecar says and what the gateway's preprocessing makes; onnxruntime loads
the model and it returns a probability for a synthetic photo. A refused model never touches ``active``.

**Atomic switch**: the files are written to a staging directory and fsynced, the directory is renamed into
place, then a new symlink is renamed over ``active`` (``rename(2)`` is atomic) and the directory fsynced.
A power cut leaves either the old or the new model active, never a half-written one. Only the active and
the previous model are kept.

The daemon's retina component polls :meth:`ModelStore.active_model_path` and swaps its onnxruntime session
between captures when it changes (:class:`ActiveModel`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.errors import ModelError, ModelInputMismatch, ModelRefused, RefusalReason
from gateway.retina.triage import DEFAULT_MODEL, TriageModel

_logger = logging.getLogger(__name__)

ACTIVE = "active"
PREVIOUS = "previous"
MODEL_FILE = "model.onnx"
SIDECAR_FILE = "model.json"
SIGNATURE_FILE = "model.json.sig"
INSTALLED_FILE = "installed.json"
REQUIRED_KEYS = ("model_version", "sha256", "input_size", "input_contract", "thresholds", "validation")
ONNX_FLOAT = "tensor(float)"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (``openssl pkey -pubout``).

    Raises:
        ModelError: unreadable file, or not an Ed25519 public key.
    """
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelError(f"model signing key {path} cannot be read as a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ModelError(f"model signing key {path} is not an Ed25519 key")
    return key


def _signature_bytes(raw: bytes) -> bytes:
    # `openssl pkeyutl -sign -rawin` writes the 64 raw bytes; a base64 text copy (e.g. from an e-mail) also works.
    if len(raw) == 64:
        return raw
    with contextlib.suppress(ValueError):
        decoded = base64.b64decode(raw.strip(), validate=True)
        if len(decoded) == 64:
            return decoded
    return raw


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model file and its companions, as offered for installation."""

    onnx: Path
    sidecar: Path
    signature: Path | None

    @classmethod
    def beside(cls, onnx: Path, sidecar: Path | None = None, signature: Path | None = None) -> Candidate:
        """The usual layout: ``X.onnx``, ``X.json``, ``X.json.sig`` (when present)."""
        sidecar = sidecar or onnx.with_suffix(".json")
        if signature is None:
            guess = sidecar.with_name(sidecar.name + ".sig")
            signature = guess if guess.is_file() else None
        return cls(onnx=onnx, sidecar=sidecar, signature=signature)


def _read_sidecar(path: Path) -> tuple[bytes, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelRefused(RefusalReason.UNREADABLE, f"sidecar {path.name}: {exc.strerror}") from exc
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelRefused(RefusalReason.SIDECAR_INVALID, f"sidecar {path.name} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelRefused(RefusalReason.SIDECAR_INVALID, f"sidecar {path.name} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ModelRefused(RefusalReason.SIDECAR_INVALID, f"sidecar {path.name} lacks {', '.join(missing)}")
    if not isinstance(doc["validation"], dict) or not doc["validation"]:
        raise ModelRefused(RefusalReason.SIDECAR_INVALID, "the sidecar's validation summary is empty")
    return raw, doc


def check_signature(sidecar_bytes: bytes, signature: Path | None, key: Ed25519PublicKey) -> None:
    """Verify the detached Ed25519 signature over the sidecar's exact bytes.

    Raises:
        ModelRefused: no signature (``SIGNATURE_MISSING``) or one that does not verify (``SIGNATURE_INVALID``).
    """
    if signature is None:
        raise ModelRefused(RefusalReason.SIGNATURE_MISSING, "a signing key is configured; the model has no .sig")
    try:
        sig = _signature_bytes(signature.read_bytes())
    except OSError as exc:
        raise ModelRefused(RefusalReason.UNREADABLE, f"signature {signature.name}: {exc.strerror}") from exc
    try:
        key.verify(sig, sidecar_bytes)
    except InvalidSignature:
        raise ModelRefused(
            RefusalReason.SIGNATURE_INVALID, "the signature does not verify with the configured key"
        ) from None


def check_contract(model: TriageModel, contract: Mapping[str, Any], input_size: int) -> None:
    """The loaded model's input is the sidecar's contract and what the preprocessing makes.

    Raises:
        ModelRefused: ``INPUT_CONTRACT`` naming what differs.
    """
    want_shape = [3, input_size, input_size]
    shape = contract.get("shape")
    if not isinstance(shape, list) or len(shape) != 4 or shape[1:] != want_shape:
        raise ModelRefused(
            RefusalReason.INPUT_CONTRACT, f"sidecar input shape {shape} is not [N, 3, {input_size}, {input_size}]"
        )
    if contract.get("dtype") != "float32" or model.input_type != ONNX_FLOAT:
        raise ModelRefused(
            RefusalReason.INPUT_CONTRACT,
            f"input type {model.input_type} (sidecar {contract.get('dtype')!r}); the gateway feeds float32",
        )
    if contract.get("name") != model.input_name:
        said = contract.get("name")
        raise ModelRefused(
            RefusalReason.INPUT_CONTRACT, f"input is named {model.input_name!r}, the sidecar says {said!r}"
        )
    declared = model.input_shape[1:]
    if [d if isinstance(d, int) else None for d in declared] != want_shape:
        raise ModelRefused(RefusalReason.INPUT_CONTRACT, f"model input shape {model.input_shape} is not {shape}")


def _smoke_image() -> np.ndarray:
    # A synthetic orange disc on black: no patient data; enough to run the graph end to end once.
    image = np.zeros((320, 384, 3), dtype=np.uint8)
    yy, xx = np.ogrid[:320, :384]
    image[(yy - 160) ** 2 + (xx - 192) ** 2 < 150**2] = (40, 90, 180)
    return image


def verify(candidate: Candidate, key: Ed25519PublicKey | None, *, threads: int = 1) -> TriageModel:
    """Run every check on ``candidate`` (where it lies); return the loaded model.

    Raises:
        ModelRefused: the first check that fails, with its reason.
    """
    raw, doc = _read_sidecar(candidate.sidecar)
    if key is not None:
        check_signature(raw, candidate.signature, key)
    try:
        actual = sha256_file(candidate.onnx)
    except OSError as exc:
        raise ModelRefused(RefusalReason.UNREADABLE, f"model file {candidate.onnx.name}: {exc.strerror}") from exc
    if actual != doc["sha256"]:
        raise ModelRefused(
            RefusalReason.SHA256_MISMATCH,
            f"{candidate.onnx.name} has SHA-256 {actual[:16]}..., the sidecar pins {str(doc['sha256'])[:16]}...",
        )
    size = doc["input_size"]
    contract = doc["input_contract"]
    if not isinstance(size, int) or not isinstance(contract, dict):
        raise ModelRefused(RefusalReason.SIDECAR_INVALID, "input_size must be an integer, input_contract an object")
    try:
        model = TriageModel(candidate.onnx, sidecar=candidate.sidecar, threads=threads)
    except ModelInputMismatch as exc:  # TriageModel checks the ONNX input shape against input_size itself
        raise ModelRefused(RefusalReason.INPUT_CONTRACT, str(exc)) from exc
    except ModelError as exc:
        raise ModelRefused(RefusalReason.NOT_LOADABLE, str(exc)) from exc
    check_contract(model, contract, size)
    try:
        model.probability(_smoke_image())
    except ModelError as exc:
        raise ModelRefused(RefusalReason.NOT_LOADABLE, str(exc)) from exc
    return model


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """One model kept under the state directory."""

    name: str
    path: Path
    model_version: str
    sha256: str
    thresholds: dict[str, float]
    validation: dict[str, Any]
    installed_at: str | None
    signature_verified: bool
    active: bool
    previous: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (``gateway model list --json``)."""
        return {
            "name": self.name,
            "model_version": self.model_version,
            "sha256": self.sha256,
            "thresholds": self.thresholds,
            "validation": self.validation,
            "installed_at": self.installed_at,
            "signature_verified": self.signature_verified,
            "active": self.active,
            "previous": self.previous,
        }


def describe_validation(validation: Mapping[str, Any] | None) -> str:
    """One line for people: AUC with CI and the "refer" operating point of a validation summary."""
    if not validation:
        return "no validation summary"
    parts: list[str] = []
    auc, ci = validation.get("auc"), validation.get("auc_ci95")
    if isinstance(auc, int | float):
        interval = f" ({ci[0]:.3f}-{ci[1]:.3f})" if isinstance(ci, list) and len(ci) == 2 else ""
        parts.append(f"AUC {auc:.3f}{interval}")
    refer = validation.get("refer")
    if isinstance(refer, dict) and isinstance(refer.get("sensitivity"), int | float):
        parts.append(f"refer: sensitivity {refer['sensitivity']:.3f}, specificity {refer.get('specificity', 0):.3f}")
    if isinstance(validation.get("n_images"), int):
        parts.append(f"{validation['n_images']} images")
    return "; ".join(parts) or "validation summary without figures"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_synced(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _write_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


class ModelStore:
    """The installed models under ``root`` (``<state_dir>/models``) and the ``active``/``previous`` pointers."""

    def __init__(
        self, root: Path, *, signing_key: Path | None = None, now: Callable[[], datetime] | None = None
    ) -> None:
        self.root = root
        self.signing_key = signing_key
        self._now = now or (lambda: datetime.now(UTC))

    # -- pointers -------------------------------------------------------------------------------------
    def _target(self, pointer: str) -> str | None:
        try:
            name = os.readlink(self.root / pointer)
        except OSError:
            return None
        return name if (self.root / name / MODEL_FILE).is_file() else None

    def _point(self, pointer: str, name: str | None) -> None:
        link = self.root / pointer
        if name is None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            return
        tmp = self.root / f".{pointer}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(name, tmp)  # relative: the state directory can move
        os.replace(tmp, link)

    def active_model_path(self) -> Path | None:
        """The active installed model's ONNX file (resolved, so it stays valid after a switch), or None."""
        name = self._target(ACTIVE)
        return None if name is None else self.root / name / MODEL_FILE

    # -- queries --------------------------------------------------------------------------------------
    def _entry(self, name: str) -> InstalledModel:
        folder = self.root / name
        doc = json.loads((folder / SIDECAR_FILE).read_text(encoding="utf-8"))
        try:
            record = json.loads((folder / INSTALLED_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        return InstalledModel(
            name=name,
            path=folder / MODEL_FILE,
            model_version=str(doc.get("model_version")),
            sha256=str(doc.get("sha256")),
            thresholds=dict(doc.get("thresholds", {})),
            validation=dict(doc.get("validation") or {}),
            installed_at=record.get("installed_at"),
            signature_verified=bool(record.get("signature_verified")),
            active=self._target(ACTIVE) == name,
            previous=self._target(PREVIOUS) == name,
        )

    def installed(self) -> list[InstalledModel]:
        """Every kept model, active first."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self._kept()]
        entries = [self._entry(n) for n in names if (self.root / n / MODEL_FILE).is_file()]
        return sorted(entries, key=lambda e: (not e.active, not e.previous, e.installed_at or ""))

    def active(self) -> InstalledModel | None:
        """The active installed model, or None (the daemon then uses the configured or shipped one)."""
        name = self._target(ACTIVE)
        return None if name is None else self._entry(name)

    # -- changes --------------------------------------------------------------------------------------
    def install(self, candidate: Candidate, *, threads: int = 1) -> InstalledModel:
        """Check ``candidate``, copy it under the state directory and make it the active model.

        The model that was active becomes ``previous``; older ones are removed.

        Raises:
            ModelRefused: a check failed (nothing changed).
            ModelError: the signing key cannot be read.
        """
        key = load_public_key(self.signing_key) if self.signing_key is not None else None
        verify(candidate, key, threads=threads)  # where it lies: refuse early, before copying anything
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            _copy_synced(candidate.onnx, staging / MODEL_FILE)
            _copy_synced(candidate.sidecar, staging / SIDECAR_FILE)
            if candidate.signature is not None:
                _copy_synced(candidate.signature, staging / SIGNATURE_FILE)
            # Check the copies again: what is switched to is exactly what was verified.
            staged = Candidate(staging / MODEL_FILE, staging / SIDECAR_FILE,
                               staging / SIGNATURE_FILE if candidate.signature is not None else None)  # fmt: skip
            model = verify(staged, key, threads=threads)
            sha = sha256_file(staged.onnx)
            record = {
                "installed_at": self._now().isoformat(timespec="seconds"),
                "source": candidate.onnx.name,
                "signature_verified": key is not None,
            }
            _write_synced(staging / INSTALLED_FILE, json.dumps(record, indent=1) + "\n")
            _fsync_dir(staging)
            name = f"{_SAFE.sub('_', model.model_version)[:80]}-{sha[:12]}"
            final = self.root / name
            if final.exists():  # the same bytes again: keep the copy we have, refresh its record
                shutil.rmtree(final)
            os.rename(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        old = self._target(ACTIVE)
        if old is not None and old != name:
            self._point(PREVIOUS, old)
        self._point(ACTIVE, name)
        _fsync_dir(self.root)
        self._prune()
        _logger.info("triage model %s installed and active (previous: %s)", name, old)
        return self._entry(name)

    def rollback(self) -> InstalledModel:
        """Make the previous model active again (and the current one previous).

        Raises:
            ModelRefused: ``NO_PREVIOUS`` when no previous model is kept.
        """
        previous, active = self._target(PREVIOUS), self._target(ACTIVE)
        if previous is None:
            raise ModelRefused(RefusalReason.NO_PREVIOUS, "no previous model is kept")
        self._point(ACTIVE, previous)
        self._point(PREVIOUS, active)
        _fsync_dir(self.root)
        _logger.info("triage model rolled back to %s (was %s)", previous, active)
        return self._entry(previous)

    def _kept(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]

    def _prune(self) -> None:
        keep = {self._target(ACTIVE), self._target(PREVIOUS)}
        for path in self._kept():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)


def model_root(state_dir: Path) -> Path:
    """Where installed models live: ``<state_dir>/models``."""
    return state_dir / "models"


def model_path(configured: Path | None, store: ModelStore) -> Path:
    """The model the daemon should run: the configured path, else the active installed one, else the shipped one."""
    if configured is not None:
        return configured
    return store.active_model_path() or DEFAULT_MODEL


class ActiveModel:
    """The daemon's loaded model, following ``active`` (unless the config pins a path).

    :meth:`refresh` loads the new model *before* swapping the reference, so a capture in flight finishes with
    the session it started with and the next one uses the new model; a model that fails to load is logged and
    the running one stays.
    """

    def __init__(
        self, store: ModelStore, configured: Path | None, *, threads: int = 1, low_memory: bool = True
    ) -> None:
        self.store = store
        self.configured = configured
        self.threads = threads
        self.low_memory = low_memory
        self.path: Path | None = None
        self.model: TriageModel | None = None
        self.error: str | None = None

    def load(self) -> TriageModel | None:
        """Load the model :func:`model_path` names (None with :attr:`error` set when it cannot be loaded)."""
        path = model_path(self.configured, self.store)
        self.path = path
        try:
            self.model = TriageModel(path, threads=self.threads, low_memory=self.low_memory)
            self.error = None
        except ModelError as exc:
            _logger.error("triage model not loaded: %s", exc)
            self.model, self.error = None, str(exc)
        return self.model

    def refresh(self) -> bool:
        """Swap to the active installed model if it changed; True when the model was swapped."""
        if self.configured is not None:
            return False
        path = model_path(None, self.store)
        if path == self.path:
            return False
        try:
            model = TriageModel(path, threads=self.threads, low_memory=self.low_memory)
        except ModelError as exc:
            _logger.error("new triage model %s not loaded, keeping the running one: %s", path.parent.name, exc)
            self.path = path  # do not retry the same broken file every poll
            return False
        self.model, self.path, self.error = model, path, None
        _logger.info("triage model switched to %s", model.model_version)
        return True

    def installed(self) -> dict[str, Any]:
        """For the status page: when the running model was installed and its validation summary, in words."""
        model = self.model
        entry = None
        if model is not None and self.path is not None and self.path.parent.parent == self.store.root:
            with contextlib.suppress(OSError, ValueError):
                entry = self.store._entry(self.path.parent.name)
        return {
            "installed_at": None if entry is None else entry.installed_at,
            "validation_text": describe_validation(None if model is None else model.info.validation),
        }
