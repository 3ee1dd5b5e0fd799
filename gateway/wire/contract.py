"""The gateway <-> platform message contract: topics, schema ids, payload builders and parsers.

Pure: records in, bytes out; bytes in, values or :class:`~gateway.errors.ContractError` out. The JSON
Schemas in ``schemas/`` (published as ``docs/contract/``) are the reference; every payload this module
builds validates against them. Downlink messages are parsed under limits by :mod:`gateway.wire.downlink`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Literal

import jsonschema

from gateway.errors import ContractError
from gateway.records import BloodPressureReading, Capture, GlucoseReading, PressureUnit, Referral

# Topics, relative to the configured prefix (default cg/v1/{site_id}/{gateway_id}/).
TOPIC_STATUS = "status"
TOPIC_GLUCOSE = "glucose"
TOPIC_CAPTURE = "retina/capture"
TOPIC_IMAGE = "retina/image/{capture_id}"
TOPIC_EVENTS = "events"
TOPIC_ACK = "ack"
TOPIC_REFERRAL = "cmd/referral"
TOPIC_BLOOD_PRESSURE = "blood-pressure"

SCHEMA_GLUCOSE = "cg.glucose/1"
SCHEMA_FHIR = "cg.fhir-observation/1"
SCHEMA_EVENT = "cg.event/1"
SCHEMA_STATUS = "cg.status/1"
SCHEMA_ACK = "cg.ack/1"
SCHEMA_REFERRAL = "cg.referral/1"
SCHEMA_CAPTURE = "cg.capture/1"
SCHEMA_BLOOD_PRESSURE = "cg.blood-pressure/1"
SCHEMA_FHIR_BLOOD_PRESSURE = "cg.fhir-blood-pressure/1"

MESSAGE_ID_SYSTEM = "urn:clinic-gateway:message-id"
READING_ID_SYSTEM = "urn:clinic-gateway:reading-id"
PATIENT_ID_SYSTEM = "urn:clinic-gateway:patient-id"
TIME_TRUSTED_EXTENSION = "urn:clinic-gateway:fhir:time-trusted"
CLOCK_OFFSET_EXTENSION = "urn:clinic-gateway:fhir:meter-clock-offset-s"

LOINC_GLUCOSE_BLOOD = "2339-0"  # Glucose [Mass/volume] in Blood
LOINC_GLUCOSE_CAPILLARY_MASS = "41653-7"  # Glucose [Mass/volume] in Capillary blood by Glucometer
LOINC_GLUCOSE_CAPILLARY_MOLES = "14743-9"  # Glucose [Moles/volume] in Capillary blood by Glucometer
UCUM = "http://unitsofmeasure.org"

# Blood pressure as FHIR: the vital-signs blood pressure panel (docs/contract.md).
LOINC_BP_PANEL = "85354-9"  # Blood pressure panel with all children optional
LOINC_SYSTOLIC = "8480-6"  # Systolic blood pressure
LOINC_DIASTOLIC = "8462-4"  # Diastolic blood pressure
LOINC_MEAN_BP = "8478-0"  # Mean blood pressure
LOINC_HEART_RATE = "8867-4"  # Heart rate
VITAL_SIGNS_BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
BP_STATUS_EXTENSION = "urn:clinic-gateway:fhir:bp-measurement-status"
"""What the cuff said about a measurement (irregular pulse, body movement, cuff fit...), one ``valueCode`` each
(StructureDefinition in ``docs/contract/``)."""
VALUE_AS_REPORTED_EXTENSION = "urn:clinic-gateway:fhir:value-as-reported"
"""A component's value as the device reported it (kPa) when the ``valueQuantity`` is converted to mm[Hg]."""
UCUM_PRESSURE = {PressureUnit.MMHG: "mm[Hg]", PressureUnit.KPA: "kPa"}

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


def _envelope(schema_id: str, message_id: str, site_id: str, gateway_id: str, created_at: datetime) -> dict[str, Any]:
    return {
        "schema": schema_id,
        "message_id": message_id,
        "site_id": site_id,
        "gateway_id": gateway_id,
        "created_at": created_at.isoformat(timespec="milliseconds"),
    }


def glucose_document(
    reading: GlucoseReading,
    *,
    reading_id: str,
    message_id: str,
    site_id: str,
    gateway_id: str,
    created_at: datetime,
) -> dict[str, Any]:
    """A reading as a ``cg.glucose/1`` document."""
    doc = _envelope(SCHEMA_GLUCOSE, message_id, site_id, gateway_id, created_at)
    doc.update(
        reading_id=reading_id,
        meter_id=reading.meter_id,
        sequence=reading.sequence,
        meter_time=reading.meter_time.isoformat(timespec="seconds"),
        clock_offset_s=round(reading.clock_offset_s, 3),
        corrected_time=reading.corrected_time.isoformat(timespec="seconds"),
        time_trusted=reading.time_trusted,
        value=reading.value,
        unit=str(reading.unit),
        mmol_l=reading.mmol_l,
        patient_id=reading.patient_id,
        session_id=reading.session_id,
        sample_type=reading.sample_type,
        sample_location=reading.sample_location,
        meal=None if reading.meal is None else str(reading.meal),
        control_solution=reading.control_solution,
        flags=list(reading.flags),
    )
    return doc


def fhir_observation(
    reading: GlucoseReading, *, reading_id: str, message_id: str, site_id: str, gateway_id: str
) -> dict[str, Any]:
    """A reading as a FHIR R4 Observation (capillary blood glucose by glucometer)."""
    moles = str(reading.unit) == "mmol/L"
    loinc = LOINC_GLUCOSE_CAPILLARY_MOLES if moles else LOINC_GLUCOSE_CAPILLARY_MASS
    display = (
        "Glucose [Moles/volume] in Capillary blood by Glucometer"
        if moles
        else "Glucose [Mass/volume] in Capillary blood by Glucometer"
    )
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": reading_id,
        "identifier": [
            {"system": MESSAGE_ID_SYSTEM, "value": message_id},
            {"system": READING_ID_SYSTEM, "value": reading_id},
        ],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": display}]},
        "effectiveDateTime": reading.corrected_time.isoformat(timespec="seconds"),
        "valueQuantity": {"value": reading.value, "unit": str(reading.unit), "system": UCUM, "code": str(reading.unit)},
        "device": {"display": reading.meter_id, "identifier": {"value": reading.meter_id}},
        "extension": [
            {"url": TIME_TRUSTED_EXTENSION, "valueBoolean": reading.time_trusted},
            {"url": CLOCK_OFFSET_EXTENSION, "valueDecimal": round(reading.clock_offset_s, 3)},
        ],
        "performer": [{"display": f"{site_id}/{gateway_id}"}],
    }
    if reading.patient_id is not None:
        obs["subject"] = {"identifier": {"system": PATIENT_ID_SYSTEM, "value": reading.patient_id}}
    notes = []
    if reading.meal is not None:
        notes.append(f"meal: {reading.meal}")
    if reading.control_solution:
        notes.append("control solution")
    notes.extend(reading.flags)
    if notes:
        obs["note"] = [{"text": n} for n in notes]
    return obs


def glucose_payload(
    reading: GlucoseReading,
    *,
    reading_id: str,
    message_id: str,
    site_id: str,
    gateway_id: str,
    created_at: datetime,
    payload_format: PayloadFormat = "json",
) -> bytes:
    """Bytes for the ``glucose`` topic in the configured format."""
    if payload_format == "fhir":
        return dumps(
            fhir_observation(
                reading, reading_id=reading_id, message_id=message_id, site_id=site_id, gateway_id=gateway_id
            )
        )
    return dumps(
        glucose_document(
            reading,
            reading_id=reading_id,
            message_id=message_id,
            site_id=site_id,
            gateway_id=gateway_id,
            created_at=created_at,
        )
    )


def blood_pressure_document(
    reading: BloodPressureReading,
    *,
    reading_id: str,
    message_id: str,
    site_id: str,
    gateway_id: str,
    created_at: datetime,
) -> dict[str, Any]:
    """A blood pressure reading as a ``cg.blood-pressure/1`` document (values as reported and in mmHg)."""
    doc = _envelope(SCHEMA_BLOOD_PRESSURE, message_id, site_id, gateway_id, created_at)
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


def _loinc(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display}


def _pressure_component(code: str, display: str, value: float, mmhg: float, unit: PressureUnit) -> dict[str, Any]:
    component: dict[str, Any] = {
        "code": _loinc(code, display),
        "valueQuantity": {"value": mmhg, "unit": "mmHg", "system": UCUM, "code": UCUM_PRESSURE[PressureUnit.MMHG]},
    }
    if unit is not PressureUnit.MMHG:
        reported = {"value": value, "unit": str(unit), "system": UCUM, "code": UCUM_PRESSURE[unit]}
        component["extension"] = [{"url": VALUE_AS_REPORTED_EXTENSION, "valueQuantity": reported}]
    return component


def fhir_blood_pressure(
    reading: BloodPressureReading, *, reading_id: str, message_id: str, site_id: str, gateway_id: str
) -> dict[str, Any]:
    """A blood pressure reading as a FHIR R4 Observation: the vital-signs blood pressure panel (LOINC 85354-9)
    with systolic, diastolic, mean (when the cuff gave it) and heart rate (when it gave a pulse) components in
    UCUM mm[Hg] and /min. It claims the vital-signs ``bp`` profile when it has its subject (the patient)."""
    components = [
        _pressure_component(LOINC_SYSTOLIC, "Systolic blood pressure", reading.systolic, reading.systolic_mmhg,
                            reading.unit),
        _pressure_component(LOINC_DIASTOLIC, "Diastolic blood pressure", reading.diastolic, reading.diastolic_mmhg,
                            reading.unit),
    ]  # fmt: skip
    if reading.mean_arterial is not None and reading.mean_arterial_mmhg is not None:
        components.append(
            _pressure_component(LOINC_MEAN_BP, "Mean blood pressure", reading.mean_arterial,
                                reading.mean_arterial_mmhg, reading.unit)
        )  # fmt: skip
    if reading.pulse_bpm is not None:
        components.append(
            {
                "code": _loinc(LOINC_HEART_RATE, "Heart rate"),
                "valueQuantity": {"value": reading.pulse_bpm, "unit": "beats/minute", "system": UCUM, "code": "/min"},
            }
        )
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": reading_id,
        "identifier": [
            {"system": MESSAGE_ID_SYSTEM, "value": message_id},
            {"system": READING_ID_SYSTEM, "value": reading_id},
        ],
        "status": "final",
        "category": [
            {
                "coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}],
                "text": "Vital Signs",
            }
        ],
        "code": _loinc(LOINC_BP_PANEL, "Blood pressure panel with all children optional"),
        "effectiveDateTime": reading.corrected_time.isoformat(timespec="seconds"),
        "device": {"display": reading.meter_id, "identifier": {"value": reading.meter_id}},
        "extension": [
            {"url": TIME_TRUSTED_EXTENSION, "valueBoolean": reading.time_trusted},
            {"url": CLOCK_OFFSET_EXTENSION, "valueDecimal": round(reading.clock_offset_s, 3)},
            *({"url": BP_STATUS_EXTENSION, "valueCode": str(s)} for s in reading.status),
        ],
        "performer": [{"display": f"{site_id}/{gateway_id}"}],
        "component": components,
    }
    if reading.patient_id is not None:
        obs["meta"] = {"profile": [VITAL_SIGNS_BP_PROFILE]}
        obs["subject"] = {"identifier": {"system": PATIENT_ID_SYSTEM, "value": reading.patient_id}}
    if reading.flags:
        obs["note"] = [{"text": flag} for flag in reading.flags]
    return obs


def blood_pressure_payload(
    reading: BloodPressureReading,
    *,
    reading_id: str,
    message_id: str,
    site_id: str,
    gateway_id: str,
    created_at: datetime,
    payload_format: PayloadFormat = "json",
) -> bytes:
    """Bytes for the ``blood-pressure`` topic in the configured format."""
    ids = {"reading_id": reading_id, "message_id": message_id, "site_id": site_id, "gateway_id": gateway_id}
    if payload_format == "fhir":
        return dumps(fhir_blood_pressure(reading, **ids))
    return dumps(blood_pressure_document(reading, created_at=created_at, **ids))


def event_payload(
    *,
    kind: str,
    level: str,
    message: str,
    detail: Mapping[str, Any],
    message_id: str,
    site_id: str,
    gateway_id: str,
    created_at: datetime,
) -> bytes:
    """Bytes for the ``events`` topic (operational, never patient data)."""
    doc = _envelope(SCHEMA_EVENT, message_id, site_id, gateway_id, created_at)
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


def capture_document(
    capture: Capture,
    *,
    message_id: str,
    site_id: str,
    gateway_id: str,
    created_at: datetime,
    chunk_size: int,
    chunks: int,
) -> dict[str, Any]:
    """A retinal capture as a ``cg.capture/1`` document (metadata; the image follows in ``chunks`` chunks)."""
    doc = _envelope(SCHEMA_CAPTURE, message_id, site_id, gateway_id, created_at)
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


def capture_payload(
    capture: Capture,
    *,
    message_id: str,
    site_id: str,
    gateway_id: str,
    created_at: datetime,
    chunk_size: int,
    chunks: int,
) -> bytes:
    """Bytes for the ``retina/capture`` topic."""
    return dumps(
        capture_document(
            capture,
            message_id=message_id,
            site_id=site_id,
            gateway_id=gateway_id,
            created_at=created_at,
            chunk_size=chunk_size,
            chunks=chunks,
        )
    )


def image_topic(capture_id: str) -> str:
    """The relative topic of an image's chunk messages."""
    return TOPIC_IMAGE.format(capture_id=capture_id)
