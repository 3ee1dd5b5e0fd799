"""Issue 16 gap 1: a meter's control-solution tests are never a patient's glucose.

- The nurse's desk lists them as the meter's QC history, never among the patient's readings, never banded
  Low/High, never in the download's counts (Flask test client, real DownloadSession).
- End to end: an emulated OneTouch Ultra 2 on a real pty holding control-solution records, the real daemon in a
  subprocess (hotplug, auto-sync, store, forwarder), real mosquitto, the reference receiver: the QC results arrive
  on the ``qc`` topic without a patient subject or a patient glucose code, the readings with both; and the
  daemon's own pages show the QC results as the meter's QC and not among the patient's readings.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from support.broker import free_port, wait_until
from support.daemon_proc import DaemonProcess, write_config
from web_harness import (
    CoreThread,
    HttpBrowser,
    add_users,
    login,
    post_form,
    scripted_records,
)

from gateway.config import load_config
from gateway.emulate.serial_meter import MeterState, SerialMeterEmulator, StoredReading
from gateway.records import Meal, MeterInfo, MeterRecord, Unit
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store.readings import upsert_meter
from gateway.wire import contract, fhir

PATIENT = "110105-PX-4471"
METER = "serial:TM0042"


def records_with_controls() -> list[MeterRecord]:
    """The six scripted patient readings, and two control-solution tests among them: a LOW-range and a
    HIGH-range control (both would be banded and counted if taken for the patient's)."""
    patient = scripted_records()
    low = replace(patient[0], sequence=7, value=2.4, unit=Unit.MMOL_L, meal=None, control_solution=True)
    high = replace(patient[3], sequence=8, value=21.0, unit=Unit.MMOL_L, meal=None, control_solution=True)
    return [*patient[:2], low, *patient[2:5], high, patient[5]]


@pytest.fixture
def meter_records() -> list[MeterRecord]:
    """The scripted meter holds patient readings and control-solution tests."""
    return records_with_controls()


def _download(client: FlaskClient) -> str:
    started = post_form(client, "/nurse", "/nurse/sync", {"patient_id": PATIENT, "target": METER})
    location = started.headers["Location"]
    session_id = location.rsplit("/", 1)[-1]
    deadline = time.monotonic() + 60
    while not client.get(f"/nurse/api/progress/{session_id}").get_json()["finished"]:
        assert time.monotonic() < deadline, "the download did not finish"
        time.sleep(0.05)
    return session_id


def test_control_tests_are_the_meters_qc_history_not_the_patients_readings(
    client: FlaskClient, runtime: Runtime, core: CoreThread
) -> None:
    upsert_meter(runtime.store, MeterInfo(meter_id=METER, family="scripted", transport="serial", serial="TM0042"))
    login(client, "nina")
    session_id = _download(client)
    html = client.get(f"/nurse/session/{session_id}").get_data(as_text=True)

    readings_table = html.split('id="readings-table"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<tr class="band-(\w+)">', readings_table) == ["normal", "low", "high", "normal", "normal",
                                                                        "normal"]  # fmt: skip
    assert "2.4" not in readings_table and "21.0" not in readings_table
    assert "6 new readings" in html

    qc_table = html.split('id="qc-table"', 1)[1].split("</table>", 1)[0]
    assert len(re.findall(r'<tr class="qc qc-new">', qc_table)) == 2
    assert "2.4" in qc_table and "21.0" in qc_table and "this download" in qc_table
    assert "Low" not in qc_table and "High" not in qc_table  # a control result is not a patient's band

    services = GatewayServices(runtime)
    page = services.session_readings(session_id, low_below=3.9, high_above=13.9)
    assert (page.total, page.low, page.high) == (6, 1, 1)  # the controls count in no patient statistic
    history = services.meter_qc_history(METER)
    assert sorted(r.value for r in history) == [2.4, 21.0]
    assert all(not hasattr(r, "patient_id") for r in history)

    # The next download of the same meter shows the meter's QC history, none of it new.
    second = client.get(f"/nurse/session/{_download(client)}").get_data(as_text=True)
    qc_again = second.split('id="qc-table"', 1)[1].split("</table>", 1)[0]
    assert len(re.findall(r'<tr class="qc">', qc_again)) == 2 and "qc-new" not in qc_again


# -- end to end: emulated meter -> real daemon -> mosquitto -> reference receiver; the daemon's own pages ------------
PATIENT_VALUES = (95, 143, 212, 71)
CONTROL_VALUES = (118, 312)  # a normal and a high control level: neither may ever read as the patient's


def test_control_results_travel_as_qc_from_an_emulated_meter_through_the_daemon(
    tmp_path: Path, broker, receiver_factory
) -> None:
    observation_r4b = pytest.importorskip("fhir.resources.R4B.observation")
    meter = MeterState("onetouch_ultra2")  # its memory marks control-solution tests ("C"), as a real Ultra 2
    now = meter.now()
    values = [(v, False) for v in PATIENT_VALUES[:2]] + [(CONTROL_VALUES[0], True)]
    values += [(v, False) for v in PATIENT_VALUES[2:]] + [(CONTROL_VALUES[1], True)]
    meter.readings = [
        StoredReading(now - timedelta(hours=5 * (len(values) - i)), v, None if control else Meal.BEFORE_MEAL, control)
        for i, (v, control) in enumerate(values)
    ]
    meter_id = f"onetouch_ultra2:{meter.serial}"
    link = tmp_path / "ttyMETER"
    web_port = free_port()
    config = write_config(
        tmp_path / "gateway.toml", tmp_path / "state", web=True, web_port=web_port, broker_port=broker.port,
        payload_format="fhir",
        extra=f"""
[meters.ble]
enabled = false

[meters.serial]
enabled = true
ports = ["{link}"]
poll_interval_s = 0.1
auto_sync = true

[meters.registry]
"{meter_id}" = "P-0042"
""",
    )  # fmt: skip
    runtime = open_runtime(load_config(config))
    add_users(runtime)
    runtime.store.close()
    receiver = receiver_factory(broker)
    emu = SerialMeterEmulator(meter, link=link)
    try:
        with DaemonProcess(config, tmp_path) as daemon:
            daemon.wait_ready()
            emu.start()  # the nurse plugs the meter in: the daemon identifies it and downloads it
            wait_until(lambda: receiver.counts()["readings"] == len(PATIENT_VALUES), what="the patient's readings")
            wait_until(lambda: receiver.counts()["qc_results"] == len(CONTROL_VALUES), what="the QC results")
            html = _daemon_session_page(web_port)
    finally:
        emu.stop()

    assert receiver.counts()["invalid"] == 0
    readings = [r["doc"] for r in receiver.readings()]
    assert sorted(d["valueQuantity"]["value"] for d in readings) == sorted(PATIENT_VALUES)
    for doc in readings:
        contract.validate(contract.SCHEMA_FHIR, doc)
        assert doc["subject"]["identifier"]["value"] == "P-0042"
        assert doc["code"]["coding"][0]["code"] == "41653-7"  # capillary blood by glucometer, mg/dL
    qc = [r["doc"] for r in receiver.qc_results()]
    assert sorted(d["valueQuantity"]["value"] for d in qc) == sorted(CONTROL_VALUES)
    for doc in qc:
        contract.validate(contract.SCHEMA_FHIR_QC, doc)
        obs = observation_r4b.Observation.model_validate(doc)  # the independent FHIR library
        assert obs.subject.type == "Device" and obs.subject.identifier.value == meter_id
        assert {c.code for c in obs.code.coding}.isdisjoint(fhir.GLUCOSE_LOINC_CODES)
        assert "P-0042" not in json.dumps(doc) and "Patient" not in json.dumps(doc)

    # The daemon's pages: the download lists the controls as the meter's QC, not among the patient's readings.
    readings_table = html.split('id="readings-table"', 1)[1].split("</table>", 1)[0]
    assert len(re.findall(r'<tr class="band-', readings_table)) == len(PATIENT_VALUES)
    qc_table = html.split('id="qc-table"', 1)[1].split("</table>", 1)[0]
    assert len(re.findall(r'<tr class="qc qc-new">', qc_table)) == len(CONTROL_VALUES)
    for value in CONTROL_VALUES:
        assert f">{value} mg/dL<" in qc_table and f">{value} mg/dL<" not in readings_table
    assert f"{len(PATIENT_VALUES)} new readings" in html


def _daemon_session_page(port: int) -> str:
    """Log in to the daemon's pages as the nurse and open today's (auto-synced) download."""
    browser = HttpBrowser(port)
    assert browser.login("nina") == 302
    session_link = re.compile(r'href="(/nurse/session/[0-9a-f]{32})"')
    found: list[str] = []

    def listed() -> bool:
        status, desk = browser.request("GET", "/nurse")
        found[:] = session_link.findall(desk) if status == 200 else []
        return bool(found)

    wait_until(listed, what="the download on the nurse's desk")
    status, html = browser.request("GET", found[0])
    assert status == 200
    return html
