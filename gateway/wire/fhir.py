"""Glucose readings and quality-control results as FHIR R4 Observations: the clinical coding of the contract.

Pure: records in, JSON-able dicts out. Every code below is published by its terminology and cited in
``docs/contract.md`` ("Clinical coding"); nothing here is made up except the project's own extensions and
its meter-flag code system, which live under ONE canonical namespace (:data:`FHIR_BASE`) and are shipped
as StructureDefinition / CodeSystem resources in ``schemas/`` (published as ``docs/contract/``).

- **LOINC from sample type AND unit** (:func:`glucose_code`): capillary whole blood "by Glucometer",
  venous and arterial whole blood, plasma (any vessel) as "Serum or Plasma", interstitial fluid; an unknown
  or undetermined whole-blood sample as "Blood" (the documented choice). Mass/volume for mg/dL,
  moles/volume for mmol/L, so code and UCUM unit always agree (the JSON Schema checks the pairs).
- **Meal context, tester, health** as Observation components, coded with ISO/IEEE 11073-10101 (MDC, as the
  HL7 Personal Health Device IG codes a Bluetooth glucose meter's context) and, for the meal, SNOMED CT.
- **Meter flags** (HI/LO, sensor annunciations, clock trouble, the patient's comment codes) as coded
  extensions, never as free text: HI/LO also set ``valueQuantity.comparator``.
- **Quality-control results** (:func:`qc_observation`): subject and device are the meter (a Device), the code
  says control solution; no patient, no glucose LOINC code.
- **Blood pressure** (:func:`blood_pressure_observation`): the vital-signs blood pressure panel (LOINC 85354-9)
  with systolic 8480-6, diastolic 8462-4, mean 8478-0 and heart rate 8867-4 as components, in UCUM ``mm[Hg]``
  (a kPa cuff's values converted; what it reported kept in an extension); what the cuff said about the
  measurement (irregular pulse, body movement, cuff fit...) as coded extensions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from gateway.records import (
    BloodPressureReading,
    ControlResult,
    GlucoseReading,
    Health,
    Meal,
    PressureUnit,
    QcOutcome,
    SampleType,
    Tester,
    Unit,
)
from gateway.wire.envelope import Envelope

FHIR_BASE = "https://clinic-gateway.example.org/fhir"
"""The project's ONE canonical namespace for what it defines in FHIR (extensions, code systems)."""


def extension_url(name: str) -> str:
    """Canonical URL of one of the project's extensions (its StructureDefinition ships in ``schemas/``)."""
    return f"{FHIR_BASE}/StructureDefinition/{name}"


TIME_TRUSTED_EXTENSION = extension_url("time-trusted")
CLOCK_OFFSET_EXTENSION = extension_url("meter-clock-offset")
METER_FLAG_EXTENSION = extension_url("meter-flag")
CONTROL_LOT_EXTENSION = extension_url("control-lot")
CONTROL_IN_RANGE_EXTENSION = extension_url("control-in-range")
BP_STATUS_EXTENSION = extension_url("bp-measurement-status")
"""What a cuff said about a blood pressure measurement (irregular pulse, body movement, cuff fit...), one
``valueCode`` each."""
VALUE_AS_REPORTED_EXTENSION = extension_url("value-as-reported")
"""A component's value as the device reported it (kPa) where the ``valueQuantity`` is converted to mm[Hg]."""
EXTENSIONS = (
    TIME_TRUSTED_EXTENSION,
    CLOCK_OFFSET_EXTENSION,
    METER_FLAG_EXTENSION,
    CONTROL_LOT_EXTENSION,
    CONTROL_IN_RANGE_EXTENSION,
    BP_STATUS_EXTENSION,
    VALUE_AS_REPORTED_EXTENSION,
)
"""Every extension the gateway puts in a payload (each has its StructureDefinition in ``schemas/``)."""
METER_FLAG_SYSTEM = f"{FHIR_BASE}/CodeSystem/meter-flag"

MESSAGE_ID_SYSTEM = "urn:clinic-gateway:message-id"
READING_ID_SYSTEM = "urn:clinic-gateway:reading-id"
QC_ID_SYSTEM = "urn:clinic-gateway:qc-id"
PATIENT_ID_SYSTEM = "urn:clinic-gateway:patient-id"
METER_ID_SYSTEM = "urn:clinic-gateway:meter-id"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

Coding = dict[str, str]


def _coding(system: str, code: str, display: str) -> Coding:
    return {"system": system, "code": code, "display": display}


# -- Observation.code: LOINC by sample type and unit ------------------------------------------------------------

_LOINC_GLUCOSE: dict[str, dict[Unit, tuple[str, str]]] = {
    "capillary": {
        Unit.MG_DL: ("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer"),
        Unit.MMOL_L: ("14743-9", "Glucose [Moles/volume] in Capillary blood by Glucometer"),
    },
    "venous": {
        Unit.MG_DL: ("41652-9", "Glucose [Mass/volume] in Venous blood"),
        Unit.MMOL_L: ("39480-9", "Glucose [Moles/volume] in Venous blood"),
    },
    "arterial": {
        Unit.MG_DL: ("41651-1", "Glucose [Mass/volume] in Arterial blood"),
        Unit.MMOL_L: ("39481-7", "Glucose [Moles/volume] in Arterial blood"),
    },
    "plasma": {
        Unit.MG_DL: ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
        Unit.MMOL_L: ("14749-6", "Glucose [Moles/volume] in Serum or Plasma"),
    },
    "isf": {
        Unit.MG_DL: ("99504-3", "Glucose [Mass/volume] in Interstitial fluid"),
        Unit.MMOL_L: ("105272-9", "Glucose [Moles/volume] in Interstitial fluid"),
    },
    "blood": {
        Unit.MG_DL: ("2339-0", "Glucose [Mass/volume] in Blood"),
        Unit.MMOL_L: ("15074-8", "Glucose [Moles/volume] in Blood"),
    },
}
"""(code, LOINC long common name) per sample class and unit; sources in docs/contract.md."""

_SAMPLE_CLASS: dict[SampleType, str] = {
    SampleType.CAPILLARY_WHOLE_BLOOD: "capillary",
    SampleType.VENOUS_WHOLE_BLOOD: "venous",
    SampleType.ARTERIAL_WHOLE_BLOOD: "arterial",
    # LOINC has no capillary/venous/arterial plasma: a plasma(-referenced) value is "Serum or Plasma".
    SampleType.CAPILLARY_PLASMA: "plasma",
    SampleType.VENOUS_PLASMA: "plasma",
    SampleType.ARTERIAL_PLASMA: "plasma",
    SampleType.UNDETERMINED_PLASMA: "plasma",
    SampleType.INTERSTITIAL_FLUID: "isf",
    SampleType.UNDETERMINED_WHOLE_BLOOD: "blood",
}

GLUCOSE_LOINC_CODES = frozenset(code for units in _LOINC_GLUCOSE.values() for code, _ in units.values())
"""Every LOINC code a patient's glucose may carry (the QC message carries none of them)."""


def sample_class(sample_type: str | None) -> str:
    """The row of the LOINC table for a record's sample type: unknown, reserved and undetermined whole-blood
    samples are "blood" (2339-0 / 15074-8: true of any blood sample, claims no more than we know)."""
    try:
        known = SampleType(sample_type) if sample_type is not None else None
    except ValueError:
        known = None
    return _SAMPLE_CLASS.get(known, "blood") if known is not None else "blood"


def glucose_code(sample_type: str | None, unit: Unit) -> Coding:
    """The LOINC coding of a glucose value: chosen from the sample type and the unit together.

    Raises ValueError for a control-solution sample: a QC result is never coded as glucose in a body fluid.
    """
    if sample_type == SampleType.CONTROL_SOLUTION:
        raise ValueError("a control-solution result has no patient glucose code (it is a cg.qc/1 message)")
    code, display = _LOINC_GLUCOSE[sample_class(sample_type)][unit]
    return _coding(LOINC, code, display)


# -- components: meal, tester, health -----------------------------------------------------------------------

MDC_MEAL_CONTEXT = _coding(MDC, "8417864", "MDC_CTXT_GLU_MEAL: Meal context")
MDC_TESTER = _coding(MDC, "8417884", "MDC_CTXT_GLU_TESTER: Tester")
MDC_HEALTH = _coding(MDC, "8417820", "MDC_CTXT_GLU_HEALTH: Health")

_MEAL_CODINGS: dict[Meal, tuple[str, list[Coding]]] = {
    Meal.BEFORE_MEAL: (
        "Before meal (preprandial)",
        [_coding(SNOMED, "307165006", "Before meal"), _coding(MDC, "8417868", "MDC_CTXT_GLU_MEAL_PREPRANDIAL")],
    ),
    Meal.AFTER_MEAL: (
        "After meal (postprandial)",
        [_coding(SNOMED, "24863003", "Postprandial"), _coding(MDC, "8417872", "MDC_CTXT_GLU_MEAL_POSTPRANDIAL")],
    ),
    Meal.FASTING: (
        "Fasting",
        [_coding(SNOMED, "16985007", "Fasting"), _coding(MDC, "8417876", "MDC_CTXT_GLU_MEAL_FASTING")],
    ),
    Meal.CASUAL: (
        "Casual (without regard to meals)",
        [_coding(SNOMED, "424616004", "Without regard to meals"), _coding(MDC, "8417880", "MDC_CTXT_GLU_MEAL_CASUAL")],
    ),
    # The sources disagree on the 11073 term of "bedtime" (docs/contract.md): SNOMED CT alone.
    Meal.BEDTIME: ("Bedtime", [_coding(SNOMED, "307155000", "Before sleeping")]),
}

_TESTER_CODINGS: dict[Tester, Coding] = {
    Tester.SELF: _coding(MDC, "8417888", "MDC_CTXT_GLU_TESTER_SELF: Self"),
    Tester.HEALTH_CARE_PROFESSIONAL: _coding(MDC, "8417892", "MDC_CTXT_GLU_TESTER_HCP: Health care professional"),
    Tester.LAB_TEST: _coding(MDC, "8417896", "MDC_CTXT_GLU_TESTER_LAB: Lab test"),
}

_HEALTH_CODINGS: dict[Health, Coding] = {
    Health.MINOR_HEALTH_ISSUES: _coding(MDC, "8417824", "MDC_CTXT_GLU_HEALTH_MINOR: Minor health issues"),
    Health.MAJOR_HEALTH_ISSUES: _coding(MDC, "8417828", "MDC_CTXT_GLU_HEALTH_MAJOR: Major health issues"),
    Health.DURING_MENSES: _coding(MDC, "8417832", "MDC_CTXT_GLU_HEALTH_MENSES: During menses"),
    Health.UNDER_STRESS: _coding(MDC, "8417836", "MDC_CTXT_GLU_HEALTH_STRESS: Under stress"),
    Health.NO_HEALTH_ISSUES: _coding(MDC, "8417840", "MDC_CTXT_GLU_HEALTH_NONE: No health issues"),
}


def meal_component(meal: Meal) -> dict[str, Any]:
    """The meal context (fasting state included) as an Observation component."""
    text, codings = _MEAL_CODINGS[meal]
    return {"code": {"coding": [MDC_MEAL_CONTEXT]}, "valueCodeableConcept": {"coding": codings, "text": text}}


def tester_component(tester: Tester) -> dict[str, Any]:
    """Who took the sample, as an Observation component."""
    coding = _TESTER_CODINGS[tester]
    return {"code": {"coding": [MDC_TESTER]}, "valueCodeableConcept": {"coding": [coding]}}


def health_component(health: Health) -> dict[str, Any]:
    """The patient's state of health at the test, as an Observation component."""
    coding = _HEALTH_CODINGS[health]
    return {"code": {"coding": [MDC_HEALTH]}, "valueCodeableConcept": {"coding": [coding]}}


# -- meter flags: the project's code system ------------------------------------------------------------------

ABOVE_RANGE_FLAGS = frozenset({"above_meter_range", "sensor_result_too_high"})
BELOW_RANGE_FLAGS = frozenset({"below_meter_range", "sensor_result_too_low"})


@cache
def conformance_resource(name: str) -> dict[str, Any]:
    """One of the FHIR resources the project publishes (``StructureDefinition-time-trusted``, ...)."""
    text = resources.files("gateway.wire").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def meter_flag_displays() -> Mapping[str, str]:
    """code -> display of the meter-flag code system (read from the published CodeSystem itself)."""
    system = conformance_resource("CodeSystem-meter-flag")
    return {concept["code"]: concept["display"] for concept in system["concept"]}


def flag_extension(flag: str) -> dict[str, Any]:
    """A meter flag as a coded extension (display from the CodeSystem; a code it does not know yet travels
    without one rather than being dropped)."""
    coding: dict[str, str] = {"system": METER_FLAG_SYSTEM, "code": flag}
    display = meter_flag_displays().get(flag)
    if display is not None:
        coding["display"] = display
    return {"url": METER_FLAG_EXTENSION, "valueCoding": coding}


def _comparator(flags: tuple[str, ...]) -> str | None:
    """``>`` when the meter showed HI (the value is its upper limit), ``<`` for LO."""
    if ABOVE_RANGE_FLAGS.intersection(flags):
        return ">"
    if BELOW_RANGE_FLAGS.intersection(flags):
        return "<"
    return None


def _quantity(value: float, unit: Unit, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value, "unit": str(unit), "system": UCUM, "code": str(unit)}
    comparator = _comparator(flags)
    if comparator is not None:
        quantity["comparator"] = comparator
    return quantity


def _meter(meter_id: str) -> dict[str, Any]:
    return {"type": "Device", "identifier": {"system": METER_ID_SYSTEM, "value": meter_id}, "display": meter_id}


def _clock_extensions(time_trusted: bool, clock_offset_s: float) -> list[dict[str, Any]]:
    return [
        {"url": TIME_TRUSTED_EXTENSION, "valueBoolean": time_trusted},
        {"url": CLOCK_OFFSET_EXTENSION, "valueDecimal": round(clock_offset_s, 3)},
    ]


_LABORATORY = {"coding": [_coding(OBSERVATION_CATEGORY, "laboratory", "Laboratory")]}

_SAMPLE_LOCATION_TEXT = {
    "finger": "Finger",
    "alternate_site_test": "Alternate site (not the finger)",
    "earlobe": "Earlobe",
}


def glucose_observation(reading: GlucoseReading, *, reading_id: str, envelope: Envelope) -> dict[str, Any]:
    """A patient's glucose reading as a FHIR R4 Observation (the ``glucose`` topic's FHIR form)."""
    code = glucose_code(reading.sample_type, reading.unit)
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": reading_id,
        "identifier": [
            {"system": MESSAGE_ID_SYSTEM, "value": envelope.message_id},
            {"system": READING_ID_SYSTEM, "value": reading_id},
        ],
        "status": "final",
        "category": [_LABORATORY],
        "code": {"coding": [code], "text": code["display"]},
        "effectiveDateTime": reading.corrected_time.isoformat(timespec="seconds"),
        "valueQuantity": _quantity(reading.value, reading.unit, reading.flags),
        "device": _meter(reading.meter_id),
        "extension": [
            *_clock_extensions(reading.time_trusted, reading.clock_offset_s),
            *(flag_extension(flag) for flag in reading.flags),
        ],
        "performer": [{"display": envelope.sender}],
    }
    if reading.patient_id is not None:
        obs["subject"] = {"type": "Patient", "identifier": {"system": PATIENT_ID_SYSTEM, "value": reading.patient_id}}
    location = _SAMPLE_LOCATION_TEXT.get(reading.sample_location or "")
    if location is not None:
        obs["bodySite"] = {"text": location}
    components = []
    if reading.meal is not None:
        components.append(meal_component(reading.meal))
    if reading.tester is not None:
        components.append(tester_component(reading.tester))
    if reading.health is not None:
        components.append(health_component(reading.health))
    if components:
        obs["component"] = components
    return obs


QC_CODE = _coding(MDC, "160208", "MDC_CONC_GLU_CONTROL: Glucose concentration of control solution")
QC_TEXT = "Glucose meter quality control (control solution)"


def qc_observation(result: ControlResult, *, qc_id: str, envelope: Envelope) -> dict[str, Any]:
    """A meter's control-solution test as a FHIR R4 Observation: about the meter, never about a patient."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": qc_id,
        "identifier": [
            {"system": MESSAGE_ID_SYSTEM, "value": envelope.message_id},
            {"system": QC_ID_SYSTEM, "value": qc_id},
        ],
        "status": "final",
        "category": [_LABORATORY],
        "code": {"coding": [QC_CODE], "text": QC_TEXT},
        "subject": _meter(result.meter_id),
        "effectiveDateTime": result.corrected_time.isoformat(timespec="seconds"),
        "valueQuantity": _quantity(result.value, result.unit, result.flags),
        "device": _meter(result.meter_id),
        "extension": [
            *_clock_extensions(result.time_trusted, result.clock_offset_s),
            *(flag_extension(flag) for flag in result.flags),
        ],
        "performer": [{"display": envelope.sender}],
    }
    if result.lot is not None:
        obs["extension"].append({"url": CONTROL_LOT_EXTENSION, "valueString": result.lot})
    if result.outcome is not None:
        obs["extension"].append({"url": CONTROL_IN_RANGE_EXTENSION, "valueBoolean": result.outcome is QcOutcome.PASS})
    return obs


# -- blood pressure: the vital-signs panel ---------------------------------------------------------------------

LOINC_BP_PANEL = "85354-9"  # Blood pressure panel with all children optional
LOINC_SYSTOLIC = "8480-6"  # Systolic blood pressure
LOINC_DIASTOLIC = "8462-4"  # Diastolic blood pressure
LOINC_MEAN_BP = "8478-0"  # Mean blood pressure
LOINC_HEART_RATE = "8867-4"  # Heart rate
VITAL_SIGNS_BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"
UCUM_PRESSURE = {PressureUnit.MMHG: "mm[Hg]", PressureUnit.KPA: "kPa"}
_VITAL_SIGNS = {"coding": [_coding(OBSERVATION_CATEGORY, "vital-signs", "Vital Signs")], "text": "Vital Signs"}


def _loinc(code: str, display: str) -> dict[str, Any]:
    return {"coding": [_coding(LOINC, code, display)], "text": display}


def _pressure_component(code: str, display: str, value: float, mmhg: float, unit: PressureUnit) -> dict[str, Any]:
    component: dict[str, Any] = {
        "code": _loinc(code, display),
        "valueQuantity": {"value": mmhg, "unit": "mmHg", "system": UCUM, "code": UCUM_PRESSURE[PressureUnit.MMHG]},
    }
    if unit is not PressureUnit.MMHG:
        reported = {"value": value, "unit": str(unit), "system": UCUM, "code": UCUM_PRESSURE[unit]}
        component["extension"] = [{"url": VALUE_AS_REPORTED_EXTENSION, "valueQuantity": reported}]
    return component


def blood_pressure_observation(reading: BloodPressureReading, *, reading_id: str, envelope: Envelope) -> dict[str, Any]:
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
            {"system": MESSAGE_ID_SYSTEM, "value": envelope.message_id},
            {"system": READING_ID_SYSTEM, "value": reading_id},
        ],
        "status": "final",
        "category": [_VITAL_SIGNS],
        "code": _loinc(LOINC_BP_PANEL, "Blood pressure panel with all children optional"),
        "effectiveDateTime": reading.corrected_time.isoformat(timespec="seconds"),
        "device": _meter(reading.meter_id),
        "extension": [
            *_clock_extensions(reading.time_trusted, reading.clock_offset_s),
            *({"url": BP_STATUS_EXTENSION, "valueCode": str(s)} for s in reading.status),
        ],
        "performer": [{"display": envelope.sender}],
        "component": components,
    }
    if reading.patient_id is not None:
        obs["meta"] = {"profile": [VITAL_SIGNS_BP_PROFILE]}
        obs["subject"] = {"type": "Patient", "identifier": {"system": PATIENT_ID_SYSTEM, "value": reading.patient_id}}
    if reading.flags:
        obs["note"] = [{"text": flag} for flag in reading.flags]
    return obs
