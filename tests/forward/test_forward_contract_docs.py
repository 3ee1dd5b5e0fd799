"""docs/contract.md cannot drift from the schemas: every JSON example on the page parses and validates against
the schema it shows (issue 16: the ack example did not)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.wire import contract, fhir

CONTRACT_MD = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
_FENCE = re.compile(r"^```json\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[str]:
    """The page's JSON examples, in order."""
    return _FENCE.findall(CONTRACT_MD.read_text(encoding="utf-8"))


def schema_of(doc: dict[str, Any]) -> str:
    """The schema an example claims: its ``schema`` field, or for an Observation the blood pressure, QC or glucose
    form."""
    if doc.get("resourceType") == "Observation":
        codes = {c.get("code") for c in doc.get("code", {}).get("coding", [])}
        if fhir.LOINC_BP_PANEL in codes:
            return contract.SCHEMA_FHIR_BLOOD_PRESSURE
        return contract.SCHEMA_FHIR_QC if fhir.QC_CODE["code"] in codes else contract.SCHEMA_FHIR
    return str(doc["schema"])


def test_the_page_has_examples_of_every_up_and_down_message() -> None:
    shown = {schema_of(json.loads(text)) for text in examples()}
    assert {
        contract.SCHEMA_ACK,
        contract.SCHEMA_ASSIGNMENT,
        contract.SCHEMA_GLUCOSE,
        contract.SCHEMA_FHIR,
        contract.SCHEMA_QC,
        contract.SCHEMA_FHIR_QC,
        contract.SCHEMA_BLOOD_PRESSURE,
        contract.SCHEMA_FHIR_BLOOD_PRESSURE,
        contract.SCHEMA_REFERRAL,
        contract.SCHEMA_STATUS,
    } <= shown


@pytest.mark.parametrize("index", range(len(examples())))
def test_every_json_example_validates_against_its_schema(index: int) -> None:
    doc = json.loads(examples()[index])
    contract.validate(schema_of(doc), doc)
