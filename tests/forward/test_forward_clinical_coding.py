"""Issue 16 gap 2: the clinical coding of every payload the gateway can produce.

Each FHIR payload (every sample type x unit, with and without meal, tester, health and flags; QC results) is
checked three ways: by an independent FHIR library (``fhir.resources``, R4B models: structure, cardinality,
types), by the project's JSON Schemas, and against the coding table below, written here from the published
sources (cited in docs/contract.md), not from the code under test.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime
from itertools import product
from pathlib import Path

import pytest
from support.factories import bp_reading, reading

from gateway.errors import ContractError
from gateway.meters.codec import gls
from gateway.meters.codec.lifescan_ascii import COMMENT_CODES, FLAG_PARITY_ERROR
from gateway.meters.drivers.base import FLAG_ABOVE_RANGE, FLAG_BELOW_RANGE, FLAG_DISPLAYS_MMOL_L
from gateway.meters.session import FLAG_GATEWAY_CLOCK_UNSYNCED, FLAG_METER_CLOCK_IMPLAUSIBLE, FLAG_METER_CLOCK_UNKNOWN
from gateway.records import ControlResult, CuffStatus, Health, Meal, PressureUnit, QcOutcome, SampleType, Unit
from gateway.records import Tester as ContextTester  # (not a pytest class)
from gateway.wire import contract, fhir

observation_r4b = pytest.importorskip("fhir.resources.R4B.observation")

DOCS_CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract"

EXPECTED_LOINC: dict[str | None, dict[Unit, str]] = {
    # capillary whole blood "by Glucometer" (gematik HDDT ValueSet hddt-miv-blood-glucose-measurement)
    "capillary_whole_blood": {Unit.MG_DL: "41653-7", Unit.MMOL_L: "14743-9"},
    # venous / arterial whole blood (VSAC "Glucose Lab Test" 2.16.840.1.113762.1.4.1045.134)
    "venous_whole_blood": {Unit.MG_DL: "41652-9", Unit.MMOL_L: "39480-9"},
    "arterial_whole_blood": {Unit.MG_DL: "41651-1", Unit.MMOL_L: "39481-7"},
    # any plasma: "Serum or Plasma" (HDDT ValueSet; LOINC has no capillary/venous/arterial plasma)
    "capillary_plasma": {Unit.MG_DL: "2345-7", Unit.MMOL_L: "14749-6"},
    "venous_plasma": {Unit.MG_DL: "2345-7", Unit.MMOL_L: "14749-6"},
    "arterial_plasma": {Unit.MG_DL: "2345-7", Unit.MMOL_L: "14749-6"},
    "undetermined_plasma": {Unit.MG_DL: "2345-7", Unit.MMOL_L: "14749-6"},
    # interstitial fluid (HL7 CGM IG STU1 sensor readings; HDDT CGM ValueSet)
    "interstitial_fluid": {Unit.MG_DL: "99504-3", Unit.MMOL_L: "105272-9"},
    # unknown, undetermined whole blood, reserved codes: "Blood" (the documented choice)
    "undetermined_whole_blood": {Unit.MG_DL: "2339-0", Unit.MMOL_L: "15074-8"},
    None: {Unit.MG_DL: "2339-0", Unit.MMOL_L: "15074-8"},
    "reserved_12": {Unit.MG_DL: "2339-0", Unit.MMOL_L: "15074-8"},
}
EXPECTED_MEAL_SNOMED = {
    Meal.BEFORE_MEAL: "307165006",
    Meal.AFTER_MEAL: "24863003",
    Meal.FASTING: "16985007",
    Meal.CASUAL: "424616004",
    Meal.BEDTIME: "307155000",
}
MDC = "urn:iso:std:iso:11073:10101"
MDC_MEAL_CONTEXT = "8417864"  # HL7 PHD IG: MDC_CTXT_GLU_MEAL
MASS_UNIT = {Unit.MG_DL: "mg/dL", Unit.MMOL_L: "mmol/L"}
ALL_FLAGS = (
    [FLAG_ABOVE_RANGE, FLAG_BELOW_RANGE, FLAG_DISPLAYS_MMOL_L, FLAG_PARITY_ERROR]
    + [FLAG_METER_CLOCK_IMPLAUSIBLE, FLAG_METER_CLOCK_UNKNOWN, FLAG_GATEWAY_CLOCK_UNSYNCED, "time_offset_applied"]
    + [f"sensor_{name}" for name in gls.sensor_status_names(0xFFFF)]
    + [f"medication_{gls.code_name(m)}" for m in gls.MedicationId]
    + [f"comment:{name}" for name in COMMENT_CODES.values() if name]
)
"""Every flag a driver or the session can put on a record (GLS reserved status bits included)."""


def _glucose(sample_type: str | None, unit: Unit, **kw: object):
    value = 6.4 if unit is Unit.MMOL_L else 115.0
    return replace(reading(7, unit=unit, value=value), sample_type=sample_type, **kw)


def _envelope(message_id: str, created_at: datetime) -> contract.Envelope:
    return contract.Envelope(message_id, site_id="chc", gateway_id="gw", created_at=created_at)


def _fhir(r) -> dict:
    return contract.fhir_observation(r, reading_id="a" * 32, envelope=_envelope("b" * 32, r.corrected_time))


def _native(r) -> dict:
    return contract.glucose_document(r, reading_id="a" * 32, envelope=_envelope("b" * 32, r.corrected_time))


def _control(unit: Unit = Unit.MG_DL, **kw: object) -> ControlResult:
    value = 5.6 if unit is Unit.MMOL_L else 101.0
    return ControlResult(**{**reading(9, unit=unit, value=value).shared_fields(), **kw})


def _qc_fhir(result: ControlResult) -> dict:
    return fhir.qc_observation(result, qc_id="c" * 32, envelope=_envelope("d" * 32, result.corrected_time))


def _qc_native(result: ControlResult) -> dict:
    return contract.qc_document(result, qc_id="c" * 32, envelope=_envelope("d" * 32, result.corrected_time))


# -- glucose: every sample type x unit x meal -------------------------------------------------------------------
@pytest.mark.parametrize(("sample_type", "unit", "meal"), list(product(EXPECTED_LOINC, Unit, [None, *Meal])))
def test_every_glucose_payload_is_coded_from_sample_type_and_unit(sample_type, unit, meal) -> None:
    r = _glucose(sample_type, unit, meal=meal)
    doc = _fhir(r)
    contract.validate(contract.SCHEMA_FHIR, doc)
    contract.validate(contract.SCHEMA_GLUCOSE, _native(r))
    obs = observation_r4b.Observation.model_validate(doc)  # the independent FHIR library
    assert [(c.system, c.code) for c in obs.code.coding] == [("http://loinc.org", EXPECTED_LOINC[sample_type][unit])]
    assert obs.code.coding[0].display  # the LOINC long common name, for a clinician
    assert (obs.valueQuantity.system, obs.valueQuantity.code) == ("http://unitsofmeasure.org", MASS_UNIT[unit])
    assert obs.subject is not None and obs.subject.identifier.value == "P-0001"
    assert obs.note is None  # everything is coded; no free text carries flags or context
    if meal is None:
        assert obs.component is None
    else:
        (component,) = obs.component
        assert [(c.system, c.code) for c in component.code.coding] == [(MDC, MDC_MEAL_CONTEXT)]
        snomed = [c for c in component.valueCodeableConcept.coding if c.system == "http://snomed.info/sct"]
        assert [c.code for c in snomed] == [EXPECTED_MEAL_SNOMED[meal]] and snomed[0].display
        assert component.valueCodeableConcept.text


def test_tester_health_and_flags_are_coded_never_notes() -> None:
    r = _glucose(
        "capillary_whole_blood", Unit.MG_DL, tester=ContextTester.HEALTH_CARE_PROFESSIONAL, health=Health.UNDER_STRESS,
        sample_location="finger", flags=(FLAG_ABOVE_RANGE, "sensor_battery_low", FLAG_METER_CLOCK_IMPLAUSIBLE),
    )  # fmt: skip
    doc = _fhir(r)
    contract.validate(contract.SCHEMA_FHIR, doc)
    obs = observation_r4b.Observation.model_validate(doc)
    components = {c.code.coding[0].code: c.valueCodeableConcept.coding[0] for c in obs.component}
    assert components["8417884"].code == "8417892"  # MDC_CTXT_GLU_TESTER: health care professional
    assert components["8417820"].code == "8417836"  # MDC_CTXT_GLU_HEALTH: under stress
    assert obs.valueQuantity.comparator == ">"  # the meter showed HI: the true value is higher
    flags = [e.valueCoding for e in obs.extension if e.url == fhir.METER_FLAG_EXTENSION]
    assert [f.code for f in flags] == [FLAG_ABOVE_RANGE, "sensor_battery_low", FLAG_METER_CLOCK_IMPLAUSIBLE]
    assert all(f.system == fhir.METER_FLAG_SYSTEM and f.display for f in flags)
    assert obs.note is None
    text = json.dumps(doc)
    for internal in ("tester_", "health_", "control solution", "meal: "):
        assert internal not in text


def test_every_flag_a_driver_can_set_is_in_the_published_code_system() -> None:
    system = json.loads((DOCS_CONTRACT / "CodeSystem-meter-flag.json").read_text())
    codes = {c["code"] for c in system["concept"]}
    assert set(ALL_FLAGS) <= codes, sorted(set(ALL_FLAGS) - codes)
    assert system["count"] == len(system["concept"])
    codesystem_r4b = pytest.importorskip("fhir.resources.R4B.codesystem")
    codesystem_r4b.CodeSystem.model_validate(system)


def test_extensions_are_canonical_https_urls_with_published_definitions() -> None:
    """Every extension URL in a payload is under the one project namespace, and docs/contract/ ships its
    StructureDefinition (a valid FHIR resource whose url is that URL)."""
    sd_r4b = pytest.importorskip("fhir.resources.R4B.structuredefinition")
    used = set()
    docs = [
        _fhir(_glucose("venous_plasma", Unit.MMOL_L, flags=(FLAG_BELOW_RANGE,))),
        _qc_fhir(_control(lot="L-42", outcome=QcOutcome.FAIL, flags=(FLAG_METER_CLOCK_UNKNOWN,))),
        fhir.blood_pressure_observation(
            bp_reading(1, unit=PressureUnit.KPA, systolic=16.0, diastolic=10.7, status=(CuffStatus.BODY_MOVEMENT,)),
            reading_id="r-bp",
            envelope=contract.Envelope("m-bp", "s", "g", datetime(2026, 3, 1, tzinfo=UTC)),
        ),
    ]
    for doc in docs:
        used |= {e["url"] for e in doc["extension"]}
        used |= {e["url"] for c in doc.get("component", []) for e in c.get("extension", [])}
    assert used == set(fhir.EXTENSIONS)
    for url in used:
        assert url.startswith(fhir.FHIR_BASE + "/StructureDefinition/") and url.startswith("https://")
        definition = json.loads((DOCS_CONTRACT / f"StructureDefinition-{url.rsplit('/', 1)[1]}.json").read_text())
        sd = sd_r4b.StructureDefinition.model_validate(definition)
        assert sd.url == url and sd.type == "Extension" and sd.kind == "complex-type"
        fixed = [e for e in sd.differential.element if e.path == "Extension.url"]
        assert fixed and fixed[0].fixedUri == url


@pytest.mark.parametrize(("sample_type", "unit"), [(s, u) for s in EXPECTED_LOINC for u in Unit])
def test_the_schema_refuses_a_code_with_the_other_unit(sample_type, unit) -> None:
    doc = _fhir(_glucose(sample_type, unit))
    other = Unit.MMOL_L if unit is Unit.MG_DL else Unit.MG_DL
    wrong = copy.deepcopy(doc)
    wrong["valueQuantity"]["code"] = wrong["valueQuantity"]["unit"] = str(other)
    with pytest.raises(ContractError):
        contract.validate(contract.SCHEMA_FHIR, wrong)
    wrong_unit_text = copy.deepcopy(doc)
    wrong_unit_text["valueQuantity"]["unit"] = str(other)  # the display unit must agree too
    with pytest.raises(ContractError):
        contract.validate(contract.SCHEMA_FHIR, wrong_unit_text)


def test_the_schemas_refuse_notes_unknown_codes_and_urn_extensions() -> None:
    doc = _fhir(_glucose("capillary_whole_blood", Unit.MG_DL))
    for mutate in (
        lambda d: d.__setitem__("note", [{"text": "control solution"}]),
        lambda d: d["code"]["coding"][0].__setitem__("code", "1234-5"),
        lambda d: d["extension"].append({"url": "urn:clinic-gateway:fhir:time-trusted", "valueBoolean": True}),
        lambda d: d["code"]["coding"].__setitem__(0, dict(fhir.QC_CODE)),
    ):
        wrong = copy.deepcopy(doc)
        mutate(wrong)
        with pytest.raises(ContractError):
            contract.validate(contract.SCHEMA_FHIR, wrong)


# -- quality control: never a patient, never a patient glucose code ---------------------------------------------
@pytest.mark.parametrize("unit", list(Unit))
@pytest.mark.parametrize("lot_outcome", [(None, None), ("L-42", QcOutcome.PASS), ("L-7", QcOutcome.FAIL)])
def test_qc_payloads_are_about_the_meter_not_a_patient(unit, lot_outcome) -> None:
    lot, outcome = lot_outcome
    result = _control(unit, lot=lot, outcome=outcome)
    doc = _qc_fhir(result)
    contract.validate(contract.SCHEMA_FHIR_QC, doc)
    obs = observation_r4b.Observation.model_validate(doc)
    assert obs.subject.type == "Device" and obs.subject.identifier.value == result.meter_id
    assert {c.code for c in obs.code.coding}.isdisjoint(fhir.GLUCOSE_LOINC_CODES)
    assert [(c.system, c.code) for c in obs.code.coding] == [("urn:iso:std:iso:11073:10101", "160208")]
    assert "Patient" not in json.dumps(doc) and "patient" not in json.dumps(doc)
    native = _qc_native(result)
    contract.validate(contract.SCHEMA_QC, native)
    assert "patient_id" not in native and (native["lot"], native["outcome"]) == (lot, outcome)
    with pytest.raises(ContractError):  # neither form accepts a patient
        contract.validate(contract.SCHEMA_QC, {**native, "patient_id": "P-1"})
    with_patient = copy.deepcopy(doc)
    with_patient["subject"] = {"type": "Patient", "identifier": {"system": fhir.PATIENT_ID_SYSTEM, "value": "P-1"}}
    with pytest.raises(ContractError):
        contract.validate(contract.SCHEMA_FHIR_QC, with_patient)
    with pytest.raises(ContractError):  # nor is a QC result ever a valid patient glucose Observation
        contract.validate(contract.SCHEMA_FHIR, doc)


def test_a_control_solution_sample_has_no_glucose_code() -> None:
    with pytest.raises(ValueError, match="control-solution"):
        fhir.glucose_code(SampleType.CONTROL_SOLUTION, Unit.MG_DL)
    native = _native(_glucose("control_solution", Unit.MG_DL))
    with pytest.raises(ContractError):  # the native glucose schema refuses it too
        contract.validate(contract.SCHEMA_GLUCOSE, native)
    assert _native(_glucose(None, Unit.MG_DL))["control_solution"] is False


def test_times_in_payloads_carry_their_offset() -> None:
    doc = _fhir(_glucose(None, Unit.MG_DL))
    assert datetime.fromisoformat(doc["effectiveDateTime"]).tzinfo == UTC
