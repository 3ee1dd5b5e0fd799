"""Blood pressure messages as the store queues them: validated against ``cg.blood-pressure/1`` and
``cg.fhir-blood-pressure/1``, and the FHIR form parsed by an independent library (``fhir.resources``, R4B models,
R4-compatible) with the codes it does not check asserted here: the vital-signs blood pressure panel, LOINC
85354-9 with systolic 8480-6, diastolic 8462-4, mean 8478-0 and heart rate 8867-4 components, UCUM mm[Hg]."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.factories import MESSAGES, T0, bp_reading

from gateway.clock import FakeClock
from gateway.errors import ContractError
from gateway.records import CuffStatus, PressureUnit
from gateway.store import open_store
from gateway.store.blood_pressure import add_blood_pressure
from gateway.store.db import Origin
from gateway.wire import contract, fhir

REPO = Path(__file__).resolve().parents[2]
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"


def queued_docs(tmp_path: Path, fmt: str, readings: list[Any]) -> list[dict[str, Any]]:
    store = open_store(tmp_path / "gateway.db", tmp_path / "images", clock=FakeClock(T0),
                       origin=Origin("chc-test", "gw-test", fmt))  # fmt: skip
    try:
        add_blood_pressure(store, readings)
        return [json.loads(r["payload"]) for r in store.query(f"SELECT payload FROM {MESSAGES} ORDER BY seq")]
    finally:
        store.close()


READINGS = [
    bp_reading(1, status=(CuffStatus.IRREGULAR_PULSE, CuffStatus.BODY_MOVEMENT, CuffStatus.CUFF_TOO_LOOSE)),
    bp_reading(2, unit=PressureUnit.KPA, systolic=16.0, diastolic=10.7, mean_arterial=12.5, pulse_bpm=None),
    bp_reading(None, mean_arterial=None, patient_id=None, user_id=None),
]


def test_native_documents_validate(tmp_path: Path) -> None:
    docs = queued_docs(tmp_path, "json", READINGS)
    for doc in docs:
        contract.validate(contract.SCHEMA_BLOOD_PRESSURE, doc)
        assert contract.message_id_of(doc)
    assert docs[0]["status"] == ["irregular_pulse", "body_movement", "cuff_too_loose"]
    assert (docs[2]["sequence"], docs[2]["cuff_user"], docs[2]["mean_arterial"]) == (None, None, None)


def _components(obs: Any) -> dict[str, Any]:
    return {c.code.coding[0].code: c for c in obs.component}


def test_fhir_form_is_the_vital_signs_bp_panel(tmp_path: Path) -> None:
    observation = pytest.importorskip("fhir.resources.R4B.observation")
    docs = queued_docs(tmp_path, "fhir", READINGS)
    for doc in docs:
        contract.validate(contract.SCHEMA_FHIR_BLOOD_PRESSURE, doc)
    first, kpa, anonymous = (observation.Observation.model_validate(d) for d in docs)

    # The vital-signs profile's required elements: status, category vital-signs, code, subject, effective[x],
    # and the panel's systolic and diastolic components with a valueQuantity in UCUM mm[Hg].
    for obs in (first, kpa):
        assert obs.meta.profile == ["http://hl7.org/fhir/StructureDefinition/bp"]
        assert obs.status == "final"
        category = obs.category[0].coding[0]
        assert (category.system, category.code) == ("http://terminology.hl7.org/CodeSystem/observation-category",
                                                    "vital-signs")  # fmt: skip
        assert (obs.code.coding[0].system, obs.code.coding[0].code) == (LOINC, "85354-9")
        assert obs.subject.identifier.value == "P-0001" and obs.effectiveDateTime is not None
        parts = _components(obs)
        for code in ("8480-6", "8462-4", "8478-0"):
            quantity = parts[code].valueQuantity
            assert (quantity.system, quantity.code) == (UCUM, "mm[Hg]")

    parts = _components(first)
    assert [float(parts[c].valueQuantity.value) for c in ("8480-6", "8462-4", "8478-0")] == [128.0, 84.0, 99.0]
    heart_rate = parts["8867-4"].valueQuantity
    assert (float(heart_rate.value), heart_rate.system, heart_rate.code) == (71.0, UCUM, "/min")
    status = [e.valueCode for e in first.extension if e.url == fhir.BP_STATUS_EXTENSION]
    assert status == ["irregular_pulse", "body_movement", "cuff_too_loose"]

    # kPa: converted to mm[Hg] (1 kPa = 7.50062 mmHg), the value as reported kept in an extension
    parts = _components(kpa)
    assert "8867-4" not in parts  # no pulse rate: no heart rate component
    assert [float(parts[c].valueQuantity.value) for c in ("8480-6", "8462-4", "8478-0")] == [120.0, 80.3, 93.8]
    reported = parts["8480-6"].extension[0]
    assert reported.url == fhir.VALUE_AS_REPORTED_EXTENSION
    assert (float(reported.valueQuantity.value), reported.valueQuantity.code) == (16.0, "kPa")

    # no patient: no subject, so the profile (which requires one) is not claimed; no mean: no 8478-0
    assert anonymous.subject is None and anonymous.meta is None
    assert set(_components(anonymous)) == {"8480-6", "8462-4", "8867-4"}


def test_fhir_schema_refuses_a_panel_without_diastolic(tmp_path: Path) -> None:
    doc = queued_docs(tmp_path, "fhir", READINGS[:1])[0]
    doc["component"] = [c for c in doc["component"] if c["code"]["coding"][0]["code"] != "8462-4"]
    with pytest.raises(ContractError):
        contract.validate(contract.SCHEMA_FHIR_BLOOD_PRESSURE, doc)


def test_extensions_are_defined_in_the_published_contract() -> None:
    """The extensions used are StructureDefinitions in docs/contract/, valid FHIR, with the URLs used."""
    structure = pytest.importorskip("fhir.resources.R4B.structuredefinition")
    urls = {}
    for name in ("bp-measurement-status", "value-as-reported"):
        path = REPO / "docs" / "contract" / f"StructureDefinition-{name}.json"
        definition = structure.StructureDefinition.model_validate(json.loads(path.read_text(encoding="utf-8")))
        assert definition.type == "Extension" and definition.fhirVersion == "4.0.1"
        urls[name] = definition.url
    assert urls == {
        "bp-measurement-status": fhir.BP_STATUS_EXTENSION,
        "value-as-reported": fhir.VALUE_AS_REPORTED_EXTENSION,
    }
    codes = REPO / "docs" / "contract" / "StructureDefinition-bp-measurement-status.json"
    described = json.loads(codes.read_text(encoding="utf-8"))["description"]
    assert all(str(status) in described for status in CuffStatus)
