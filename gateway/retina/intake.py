"""One retinal photo in: bytes (or a camera frame) + metadata -> a stored Capture with its verdicts.

Steps: decode with limits (:mod:`gateway.retina.imaging`), SHA-256 of the original bytes, quality gate
(:mod:`gateway.retina.quality`), advisory triage (:mod:`gateway.retina.triage`, when a model is loaded),
then :func:`gateway.store.captures.add_capture`: image file by hash, capture row, ``retina/capture``
message and the chunk messages in one transaction.

A bad image raises :class:`~gateway.errors.CaptureError` before anything is stored. A model that fails
on one image does not lose the photo: it is stored with ``triage = None`` and an error event.
Logs carry capture ids, sources and verdicts, never patient ids or pixels.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

from gateway.errors import GatewayError, ModelError
from gateway.records import Capture, Eye, Field, QualityVerdict, TriageResult
from gateway.retina import imaging, quality
from gateway.retina.triage import TriageModel
from gateway.store import Store
from gateway.store.audit import AuditEntry
from gateway.store.captures import StoredCapture, add_capture
from gateway.store.db import new_id
from gateway.store.events import add_event

_logger = logging.getLogger(__name__)

Source = Literal["camera", "folder", "upload"]

DEFAULT_MAX_BYTES = 30 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
WORKING_SIDE = 1024
"""Large JPEGs are decoded at 1/2..1/8 size, no smaller than this (the gate and the model need ~400 px;
the data set itself was built from ~768 px draft decodes). Stored and forwarded bytes stay the original."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureMeta:
    """What the technician (or the export file's name) says about a photo."""

    eye: Eye
    field: Field
    source: Source
    patient_id: str | None = None
    session_id: str | None = None
    operator: str | None = None
    captured_at: datetime | None = None
    """When the photo was taken, if known (default: now)."""
    audit: AuditEntry | None = None
    """The desk action that asked for the photo: recorded with the capture, in its transaction."""


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """The stored capture and what the store did with it (``stored.duplicate`` for the same bytes again)."""

    capture: Capture
    stored: StoredCapture
    triage_error: str | None = None


@dataclass(frozen=True, slots=True)
class Assessment:
    """Quality verdict and triage of one decoded image, before anything is stored (``gateway triage``)."""

    decoded: imaging.DecodedImage
    quality: QualityVerdict
    triage: TriageResult | None
    triage_error: str | None = None


@dataclass
class RetinaIntake:
    """Intake of retinal photos into one store, with one (optional) loaded model."""

    store: Store
    model: TriageModel | None
    chunk_size: int = 128 * 1024
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    counts: dict[str, int] = field(default_factory=dict)

    def assess(self, data: bytes) -> Assessment:
        """Decode, check quality and triage image bytes (nothing stored). Raises CaptureError."""
        return assess_bytes(data, self.model, max_bytes=self.max_bytes, max_pixels=self.max_pixels)

    def take(self, data: bytes, meta: CaptureMeta, *, folder_file: str | None = None) -> IntakeResult:
        """Assess and store one photo.

        Raises:
            CaptureError: the bytes are not an acceptable image (nothing stored).
            IntakeRefused / StoreError: the store cannot take it (nothing half-stored).
        """
        self.store.check_intake(len(data))  # refuse early, before spending CPU on a photo we cannot keep
        found = self.assess(data)
        decoded = found.decoded
        capture = Capture(
            capture_id=new_id(),
            sha256=decoded.sha256,
            size_bytes=decoded.size_bytes,
            media_type=decoded.media_type,
            width=decoded.width,
            height=decoded.height,
            eye=meta.eye,
            field=meta.field,
            source=meta.source,
            captured_at=meta.captured_at or self.store.clock.utc_now(),
            quality=found.quality,
            triage=found.triage,
            patient_id=meta.patient_id,
            session_id=meta.session_id,
            operator=meta.operator,
        )
        stored = add_capture(
            self.store, capture, data, chunk_size=self.chunk_size, folder_file=folder_file, audit_entry=meta.audit
        )
        if found.triage_error is not None and not stored.duplicate:
            with contextlib.suppress(GatewayError):
                add_event(
                    self.store,
                    "triage_failed",
                    "the triage model failed on a photo; it was stored without triage",
                    level="error",
                    detail={"capture_id": stored.capture_id},
                )
        outcome = "duplicate" if stored.duplicate else ("ok" if found.quality.ok else "rejected")
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        _logger.info(
            "capture %s from %s: %s, quality %s%s, triage %s, %d chunks",
            stored.capture_id, meta.source, outcome, "ok" if found.quality.ok else "failed",
            "" if found.quality.ok else f" ({', '.join(found.quality.reasons)})",
            "none" if found.triage is None else found.triage.decision, stored.chunks,
        )  # fmt: skip
        return IntakeResult(capture=capture, stored=stored, triage_error=found.triage_error)

    def take_frame(
        self, frame_bgr: npt.NDArray[np.uint8], meta: CaptureMeta, *, jpeg_quality: int = 95
    ) -> IntakeResult:
        """Store a camera frame: encoded once as JPEG; those bytes are what is hashed, stored and sent."""
        return self.take(imaging.encode_jpeg(frame_bgr, jpeg_quality), meta)


def assess_bytes(
    data: bytes, model: TriageModel | None, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Assessment:
    """Decode with limits, run the quality gate and (with a model) triage. Raises CaptureError."""
    decoded = imaging.decode(data, max_bytes=max_bytes, max_pixels=max_pixels, reduce_to=WORKING_SIDE)
    verdict = quality.assess(decoded.image)
    triage: TriageResult | None = None
    error: str | None = None
    if model is not None:
        try:
            triage = model.triage(decoded.image, verdict)
        except ModelError as exc:
            error = str(exc)
            _logger.error("triage failed: %s", exc)
    return Assessment(decoded=decoded, quality=verdict, triage=triage, triage_error=error)
