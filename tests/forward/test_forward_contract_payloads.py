"""Real payloads, as the store queues them and the receiver gets them, validated against the JSON Schemas;
the FHIR form is also parsed by ``fhir.resources`` (R4B Observation, the R4-compatible model it ships)."""

from __future__ import annotations

import json

import pytest
from support.broker import ForwarderRunner, gateway_config, wait_until
from support.factories import MESSAGES, T0, reading

from gateway.clock import Clock, FakeClock, SystemClock
from gateway.records import Unit
from gateway.store import open_store
from gateway.store.db import Origin
from gateway.store.events import add_event
from gateway.store.readings import add_readings
from gateway.wire import contract


def make_store(tmp_path, clock: Clock | None = None, *, origin: Origin):
    return open_store(tmp_path / "gateway.db", tmp_path / "images", clock=clock or FakeClock(T0), origin=origin)


def _readings():
    return [
        reading(1),
        reading(2, unit=Unit.MMOL_L, value=6.4, patient_id=None),
        reading(None, value=250.0, minutes=7),
    ]


@pytest.mark.parametrize("fmt", ["json", "fhir"])
def test_queued_payloads_validate(tmp_path, fmt: str) -> None:
    store = make_store(tmp_path, origin=Origin("chc-test", "gw-test", fmt))
    add_readings(store, _readings())
    add_event(store, "disk_low", "less than 1000 MB free", level="warning", detail={"free_mb": 800})
    rows = store.query(f"SELECT kind, payload FROM {MESSAGES} ORDER BY seq")
    assert [r["kind"] for r in rows] == ["glucose"] * 3 + ["event"]
    for row in rows[:3]:
        doc = json.loads(row["payload"])
        contract.validate(contract.SCHEMA_FHIR if fmt == "fhir" else contract.SCHEMA_GLUCOSE, doc)
        assert contract.message_id_of(doc)
    contract.validate(contract.SCHEMA_EVENT, json.loads(rows[3]["payload"]))


def test_fhir_payloads_parse_as_fhir_observations(tmp_path) -> None:
    observation_r4b = pytest.importorskip("fhir.resources.R4B.observation")
    store = make_store(tmp_path, origin=Origin("chc-test", "gw-test", "fhir"))
    add_readings(store, _readings())
    for row in store.query(f"SELECT payload FROM {MESSAGES} ORDER BY seq"):
        obs = observation_r4b.Observation.model_validate_json(row["payload"])
        assert obs.status == "final"
        assert obs.code.coding[0].system == "http://loinc.org"
        assert obs.code.coding[0].code in {"2339-0", "15074-8"}  # no sample type: "Blood" (docs/contract.md)
        assert obs.valueQuantity.system == "http://unitsofmeasure.org"
        assert obs.valueQuantity.code in {"mg/dL", "mmol/L"}


def test_schema_rejects_a_broken_payload() -> None:
    from gateway.errors import ContractError

    envelope = contract.Envelope("b" * 32, "s", "g", reading(3).corrected_time)
    doc = contract.glucose_document(reading(3), reading_id="a" * 32, envelope=envelope)
    contract.validate(contract.SCHEMA_GLUCOSE, doc)
    doc["unit"] = "mg/dl"
    with pytest.raises(ContractError, match="unit"):
        contract.validate(contract.SCHEMA_GLUCOSE, doc)


@pytest.mark.parametrize("fmt", ["json", "fhir"])
def test_receiver_validates_and_stores_both_formats(tmp_path, broker, receiver_factory, fmt: str) -> None:
    store = make_store(tmp_path / "gw", SystemClock("assume_synced"), origin=Origin("chc-test", "gw-test", fmt))
    add_readings(store, _readings())
    receiver = receiver_factory(broker)
    with ForwarderRunner(gateway_config(tmp_path / "gw", port=broker.port, payload_format=fmt), store):
        wait_until(lambda: receiver.counts()["readings"] == 3)
    assert receiver.counts()["invalid"] == 0
    assert {r["format"] for r in receiver.readings()} == {fmt}
    stored = {r["reading_id"] for r in store.query("SELECT reading_id FROM readings")}
    assert {r["reading_id"] for r in receiver.readings()} == stored


def test_fast_and_reference_validators_agree() -> None:
    """contract.validate takes jsonschema-rs's "valid" as final; it must not accept what jsonschema refuses."""
    import copy

    jsonschema = pytest.importorskip("jsonschema")
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    envelope = contract.Envelope("b" * 32, "s", "g", reading(3).corrected_time)
    good = contract.glucose_document(reading(3), reading_id="a" * 32, envelope=envelope)
    mutations = [
        ("unit", "mg/dl"), ("message_id", "B" * 32), ("created_at", "2026-13-01T00:00:00Z"),
        ("created_at", "yesterday"), ("sequence", -1), ("sequence", 1.5), ("time_trusted", "yes"),
        ("flags", [1]), ("extra", 1), ("meal", "brunch"), ("value", "108"),
    ]  # fmt: skip
    docs = [good]
    for key, value in mutations:
        doc = copy.deepcopy(good)
        doc[key] = value
        docs.append(doc)
    schema = contract.schema(contract.SCHEMA_GLUCOSE)
    cls = jsonschema.validators.validator_for(schema)
    reference = cls(schema, format_checker=cls.FORMAT_CHECKER)
    fast = jsonschema_rs.validator_for(schema, validate_formats=True)
    from gateway.errors import ContractError

    for doc in docs:
        assert not (fast.is_valid(doc) and not reference.is_valid(doc)), doc  # never more lenient
        try:
            contract.validate(contract.SCHEMA_GLUCOSE, doc)
            accepted = True
        except ContractError:
            accepted = False
        assert accepted == reference.is_valid(doc), doc  # same answers as jsonschema alone
    assert sum(not reference.is_valid(d) for d in docs) >= len(mutations) - 2  # (jsonschema has no date-time check)
