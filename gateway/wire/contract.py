"""The gateway <-> platform message contract: topics, schema ids, payload builders and parsers.

Pure: records in, bytes out; bytes in, values or :class:`~gateway.errors.ContractError` out. The JSON
Schemas in ``schemas/`` (published as ``docs/contract/``) are the reference; every payload this module
builds validates against them. Downlink messages are parsed under limits by :mod:`gateway.wire.downlink`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any, Literal

import jsonschema

from gateway.errors import ContractError
from gateway.records import BloodPressureReading, Capture, ControlResult, GlucoseReading, MeterValue, Referral
from gateway.wire import fhir
from gateway.wire.envelope import Envelope
from gateway.wire.fhir import MESSAGE_ID_SYSTEM

__all__ = ["Envelope"]  # the builders' argument, re-exported: callers import the contract, not its parts

# Topics, relative to the configured prefix (default cg/v1/{site_id}/{gateway_id}/).
TOPIC_STATUS = "status"
TOPIC_GLUCOSE = "glucose"
TOPIC_QC = "qc"
"""A meter's quality-control (control-solution) results: never on the patients' ``glucose`` topic."""
TOPIC_CAPTURE = "retina/capture"
TOPIC_IMAGE = "retina/image/{capture_id}"
TOPIC_EVENTS = "events"
TOPIC_ACK = "ack"
TOPIC_REFERRAL = "cmd/referral"
TOPIC_ASSIGNMENT = "glucose/assignment"
"""Corrections: readings sent without a patient, assigned to one at the desk (``cg.assignment/1``)."""
TOPIC_BLOOD_PRESSURE = "blood-pressure"
TOPIC_BLOOD_PRESSURE_ASSIGNMENT = "blood-pressure/assignment"
"""The same corrections (``cg.assignment/1``) for blood pressure readings (a shared cuff's other users)."""

SCHEMA_GLUCOSE = "cg.glucose/1"
SCHEMA_FHIR = "cg.fhir-observation/1"
SCHEMA_EVENT = "cg.event/1"
SCHEMA_STATUS = "cg.status/1"
SCHEMA_ACK = "cg.ack/1"
SCHEMA_REFERRAL = "cg.referral/1"
SCHEMA_CAPTURE = "cg.capture/1"
SCHEMA_QC = "cg.qc/1"
SCHEMA_FHIR_QC = "cg.fhir-qc-observation/1"
SCHEMA_ASSIGNMENT = "cg.assignment/1"
ASSIGNMENT_MAX_READINGS = 1000
"""``reading_ids`` per ``cg.assignment/1`` message (its schema's maxItems); a larger assignment is split."""
SCHEMA_BLOOD_PRESSURE = "cg.blood-pressure/1"
SCHEMA_FHIR_BLOOD_PRESSURE = "cg.fhir-blood-pressure/1"

PayloadFormat = Literal["json", "fhir"]


@cache
def schema(schema_id: str) -> dict[str, Any]:
    """The JSON Schema for ``schema_id`` (e.g. ``cg.glucose/1``)."""
    name = schema_id.replace("/", "-") + ".json"
    text = resources.files("gateway.wire").joinpath("schemas", name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(schema_id: str) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema(schema_id))
    validator: jsonschema.protocols.Validator = cls(schema(schema_id), format_checker=cls.FORMAT_CHECKER)
    return validator


@cache
def _fast_validator(schema_id: str) -> Any:
    """A compiled jsonschema-rs validator (~5 us a document instead of ~250 us), or None when not installed."""
    try:
        import jsonschema_rs
    except ImportError:  # pragma: no cover - a dependency; jsonschema alone gives the same answers
        return None
    return jsonschema_rs.validator_for(schema(schema_id), validate_formats=True)


_RULES = {
    "type": "wrong type",
    "enum": "not one of the allowed values",
    "const": "not the expected value",
    "required": "a required field is missing",
    "additionalProperties": "a field the schema does not know",
    "anyOf": "none of the allowed shapes",
    "oneOf": "not exactly one of the allowed shapes",
    "pattern": "wrong form",
    "format": "wrong format",
    "minLength": "too short",
    "maxLength": "too long",
    "minItems": "too few items",
    "maxItems": "too many items",
    "minimum": "too small",
    "maximum": "too large",
}


def _rule(error: jsonschema.ValidationError) -> str:
    """What a schema error means, without its value (jsonschema's own message quotes the value)."""
    text = _RULES.get(str(error.validator), f"breaks the schema's {error.validator!s} rule")
    required = error.validator_value
    if error.validator == "required" and isinstance(error.instance, dict) and isinstance(required, list):
        missing = [str(k) for k in required if k not in error.instance]
        text += f" ({', '.join(missing)})"
    return text


def _path(parts: Any) -> str:
    # Property names come from the schema when the path got this far; an unknown key would only appear
    # under additionalProperties, whose error sits on the object itself.
    return "/".join(str(p) for p in parts) or "(root)"


def validate(schema_id: str, obj: Any, *, what: str | None = None) -> None:
    """Raise ContractError (``where``: the first problem's JSON path, ``reason``: the rule it breaks, never the
    value) when ``obj`` breaks ``schema_id``."""
    fast = _fast_validator(schema_id)
    if fast is not None and fast.is_valid(obj):
        return  # the common case; a failure is explained by jsonschema below
    error = jsonschema.exceptions.best_match(_validator(schema_id).iter_errors(obj))
    if error is not None:
        raise ContractError(f"{_rule(error)} ({schema_id})", what=what or schema_id, where=_path(error.absolute_path))


def dumps(obj: Mapping[str, Any]) -> bytes:
    """Compact, deterministic JSON bytes."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def loads(payload: bytes, what: str) -> Any:
    """Parse JSON bytes or raise ContractError saying what could not be read (the platform side's parser;
    the gateway parses its downlink with :func:`gateway.wire.downlink.load_json`, under limits)."""
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"not UTF-8 JSON ({exc})", what=what, where="(json)") from None


def _meter_value(value: MeterValue) -> dict[str, Any]:
    """The fields a reading and a QC result share: the meter's record, its times and its value."""
    return {
        "meter_id": value.meter_id,
        "sequence": value.sequence,
        "meter_time": value.meter_time.isoformat(timespec="seconds"),
        "clock_offset_s": round(value.clock_offset_s, 3),
        "corrected_time": value.corrected_time.isoformat(timespec="seconds"),
        "time_trusted": value.time_trusted,
        "value": value.value,
        "unit": str(value.unit),
        "mmol_l": value.mmol_l,
        "session_id": value.session_id,
        "flags": list(value.flags),
    }


def glucose_document(reading: GlucoseReading, *, reading_id: str, envelope: Envelope) -> dict[str, Any]:
    """A reading as a ``cg.glucose/1`` document."""
    doc = envelope.document(SCHEMA_GLUCOSE)
    doc.update(
        reading_id=reading_id,
        **_meter_value(reading),
        patient_id=reading.patient_id,
        sample_type=reading.sample_type,
        sample_location=reading.sample_location,
        meal=None if reading.meal is None else str(reading.meal),
        tester=None if reading.tester is None else str(reading.tester),
        health=None if reading.health is None else str(reading.health),
        # a control-solution result is a cg.qc/1 message, never a reading: the field stays for consumers of
        # the first version of this schema, and is always false
        control_solution=False,
    )
    return doc


def fhir_observation(reading: GlucoseReading, *, reading_id: str, envelope: Envelope) -> dict[str, Any]:
    """A reading as a FHIR R4 Observation, coded from its sample type, unit and context
    (:func:`gateway.wire.fhir.glucose_observation`)."""
    return fhir.glucose_observation(reading, reading_id=reading_id, envelope=envelope)


def glucose_payload(
    reading: GlucoseReading, *, reading_id: str, envelope: Envelope, payload_format: PayloadFormat = "json"
) -> bytes:
    """Bytes for the ``glucose`` topic in the configured format."""
    if payload_format == "fhir":
        return dumps(fhir_observation(reading, reading_id=reading_id, envelope=envelope))
    return dumps(glucose_document(reading, reading_id=reading_id, envelope=envelope))


def qc_document(result: ControlResult, *, qc_id: str, envelope: Envelope) -> dict[str, Any]:
    """A meter's control-solution test as a ``cg.qc/1`` document: the meter, no patient."""
    doc = envelope.document(SCHEMA_QC)
    doc.update(
        qc_id=qc_id,
        **_meter_value(result),
        lot=result.lot,
        outcome=None if result.outcome is None else str(result.outcome),
    )
    return doc


def assignment_payload(
    *,
    envelope: Envelope,
    assignment_id: str,
    patient_id: str,
    meter_id: str,
    reading_ids: list[str],
) -> bytes:
    """A ``cg.assignment/1`` correction: the listed readings (sent earlier without a patient) are ``patient_id``'s.

    Always JSON, whatever ``forward.payload_format`` (the readings it names may have gone as FHIR Observations:
    their ``urn:clinic-gateway:reading-id`` identifier is the ``reading_id``)."""
    doc = envelope.document(SCHEMA_ASSIGNMENT)
    doc.update(
        assignment_id=assignment_id,
        patient_id=patient_id,
        assigned_at=envelope.created_at.isoformat(timespec="milliseconds"),
        meter_id=meter_id,
        reading_ids=reading_ids,
    )
    validate(SCHEMA_ASSIGNMENT, doc)
    return dumps(doc)


def qc_payload(
    result: ControlResult, *, qc_id: str, envelope: Envelope, payload_format: PayloadFormat = "json"
) -> bytes:
    """Bytes for the ``qc`` topic in the configured format (the FHIR form's subject is the meter)."""
    if payload_format == "fhir":
        return dumps(fhir.qc_observation(result, qc_id=qc_id, envelope=envelope))
    return dumps(qc_document(result, qc_id=qc_id, envelope=envelope))


def blood_pressure_document(reading: BloodPressureReading, *, reading_id: str, envelope: Envelope) -> dict[str, Any]:
    """A blood pressure reading as a ``cg.blood-pressure/1`` document (values as reported and in mmHg)."""
    doc = envelope.document(SCHEMA_BLOOD_PRESSURE)
    doc.update(
        reading_id=reading_id,
        meter_id=reading.meter_id,
        sequence=reading.sequence,
        cuff_user=reading.user_id,
        meter_time=None if reading.meter_time is None else reading.meter_time.isoformat(timespec="seconds"),
        clock_offset_s=round(reading.clock_offset_s, 3),
        corrected_time=reading.corrected_time.isoformat(timespec="seconds"),
        time_trusted=reading.time_trusted,
        systolic=reading.systolic,
        diastolic=reading.diastolic,
        mean_arterial=reading.mean_arterial,
        unit=str(reading.unit),
        systolic_mmhg=reading.systolic_mmhg,
        diastolic_mmhg=reading.diastolic_mmhg,
        mean_arterial_mmhg=reading.mean_arterial_mmhg,
        pulse_bpm=reading.pulse_bpm,
        status=[str(s) for s in reading.status],
        patient_id=reading.patient_id,
        session_id=reading.session_id,
        flags=list(reading.flags),
    )
    return doc


def blood_pressure_payload(
    reading: BloodPressureReading, *, reading_id: str, envelope: Envelope, payload_format: PayloadFormat = "json"
) -> bytes:
    """Bytes for the ``blood-pressure`` topic in the configured format (FHIR: the vital-signs blood pressure
    panel, :func:`gateway.wire.fhir.blood_pressure_observation`)."""
    if payload_format == "fhir":
        return dumps(fhir.blood_pressure_observation(reading, reading_id=reading_id, envelope=envelope))
    return dumps(blood_pressure_document(reading, reading_id=reading_id, envelope=envelope))


def event_payload(
    *,
    kind: str,
    level: str,
    message: str,
    detail: Mapping[str, Any],
    envelope: Envelope,
) -> bytes:
    """Bytes for the ``events`` topic (operational, never patient data)."""
    doc = envelope.document(SCHEMA_EVENT)
    doc.update(kind=kind, level=level, message=message, detail=dict(detail))
    return dumps(doc)


def status_payload(state: Literal["online", "offline"], *, site_id: str, gateway_id: str, **health: Any) -> bytes:
    """Bytes for the retained ``status`` topic; the offline form is also the Last Will."""
    doc: dict[str, Any] = {"schema": SCHEMA_STATUS, "state": state, "site_id": site_id, "gateway_id": gateway_id}
    doc.update(health)
    return dumps(doc)


def ack_payload(message_ids: list[str]) -> bytes:
    """Bytes for the ``ack`` topic (the platform side builds these)."""
    return dumps({"schema": SCHEMA_ACK, "message_ids": message_ids})


def referral_payload(referral: Referral) -> bytes:
    """Bytes for ``cmd/referral`` (the platform side builds these)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA_REFERRAL,
        "referral_id": referral.referral_id,
        "decision": referral.decision,
    }
    for key in ("capture_id", "patient_id", "note", "grader"):
        value = getattr(referral, key)
        if value is not None:
            doc[key] = value
    if referral.decided_at is not None:
        doc["decided_at"] = referral.decided_at.isoformat(timespec="seconds")
    return dumps(doc)


def message_id_of(doc: Mapping[str, Any]) -> str | None:
    """The message id of an up document, native or FHIR."""
    if doc.get("resourceType") == "Observation":
        for ident in doc.get("identifier", []):
            if isinstance(ident, Mapping) and ident.get("system") == MESSAGE_ID_SYSTEM:
                value = ident.get("value")
                return value if isinstance(value, str) else None
        return None
    value = doc.get("message_id")
    return value if isinstance(value, str) else None


def capture_document(capture: Capture, *, envelope: Envelope, chunk_size: int, chunks: int) -> dict[str, Any]:
    """A retinal capture as a ``cg.capture/1`` document (metadata; the image follows in ``chunks`` chunks)."""
    doc = envelope.document(SCHEMA_CAPTURE)
    triage = capture.triage
    doc.update(
        capture_id=capture.capture_id,
        patient_id=capture.patient_id,
        session_id=capture.session_id,
        operator=capture.operator,
        eye=str(capture.eye),
        field=str(capture.field),
        source=capture.source,
        captured_at=capture.captured_at.isoformat(timespec="milliseconds"),
        image={
            "sha256": capture.sha256,
            "size_bytes": capture.size_bytes,
            "media_type": capture.media_type,
            "width": capture.width,
            "height": capture.height,
            "chunk_size": chunk_size,
            "chunks": chunks,
        },
        quality={
            "ok": capture.quality.ok,
            "reasons": list(capture.quality.reasons),
            "metrics": dict(capture.quality.metrics),
        },
        triage=None
        if triage is None
        else {
            "referable_probability": triage.referable_probability,
            "decision": str(triage.decision),
            "model_version": triage.model_version,
            "thresholds": dict(triage.thresholds),
            "advisory": True,
        },
    )
    return doc


def capture_payload(capture: Capture, *, envelope: Envelope, chunk_size: int, chunks: int) -> bytes:
    """Bytes for the ``retina/capture`` topic."""
    return dumps(capture_document(capture, envelope=envelope, chunk_size=chunk_size, chunks=chunks))


def image_topic(capture_id: str) -> str:
    """The relative topic of an image's chunk messages."""
    return TOPIC_IMAGE.format(capture_id=capture_id)
