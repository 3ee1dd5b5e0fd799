"""The nurse's desk keeps a meter's control-solution tests apart (issue 16 gap 1): listed as the meter's QC
history, never among the patient's readings, never banded Low/High, never in the download's counts."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask.testing import FlaskClient
from web_harness import CoreThread, ScriptedMeter, login, post_form, scripted_records, serve_meter_sync

from gateway.desk import SerialSyncRequest
from gateway.records import MeterInfo, MeterRecord, Unit
from gateway.runtime import Runtime
from gateway.services import GatewayServices
from gateway.store.readings import upsert_meter

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
def core(runtime: Runtime) -> Iterator[CoreThread]:
    core = CoreThread(runtime)
    runtime.desk.queue(SerialSyncRequest)
    core.start(lambda: serve_meter_sync(runtime, lambda target: ScriptedMeter(target, records_with_controls(), 0.0)))
    yield core
    core.stop()


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
    assert sorted(r["value"] for r in history) == [2.4, 21.0]
    assert all("patient_id" not in r for r in history)

    # The next download of the same meter shows the meter's QC history, none of it new.
    second = client.get(f"/nurse/session/{_download(client)}").get_data(as_text=True)
    qc_again = second.split('id="qc-table"', 1)[1].split("</table>", 1)[0]
    assert len(re.findall(r'<tr class="qc">', qc_again)) == 2 and "qc-new" not in qc_again
