"""End to end: readings downloaded from an emulated serial meter reach the reference receiver over real MQTT."""

from __future__ import annotations

import asyncio

from support.broker import ForwarderRunner, gateway_config, wait_until
from support.serial_meters import controls_in, download

from gateway.store.outbox import Outbox


def test_serial_readings_reach_the_reference_receiver(tmp_path, broker, receiver_factory, emulators, store, clock):
    emu = emulators("onetouch_ultra2", records=60, clock_skew=-(clock.now - clock.now.replace(year=clock.now.year - 3)))
    controls = controls_in(emu)
    result = asyncio.run(download(store, clock, emu.port, patient_id="P-0042"))
    assert (result.state, result.added + result.qc_added) == ("done", 60), result.error
    receiver = receiver_factory(broker)
    config = gateway_config(tmp_path / "gw", port=broker.port)
    with ForwarderRunner(config, store):
        wait_until(lambda: receiver.counts()["readings"] == 60 - controls, what="the readings at the receiver")
        wait_until(lambda: receiver.counts()["qc_results"] == controls, what="the QC results at the receiver")
        wait_until(lambda: Outbox(store).stats().counts["glucose"] == {"acked": 60 - controls}, what="all acked")
    docs = [r["doc"] for r in receiver.readings()]
    meter_id = f"onetouch_ultra2:{emu.state.serial}"
    assert {d["meter_id"] for d in docs} == {meter_id}
    assert {d["patient_id"] for d in docs} == {"P-0042"}
    assert sorted((d["meter_time"], d["value"]) for d in docs) == sorted(
        (r.meter_time.isoformat(), float(r.value_mg_dl)) for r in emu.state.readings if not r.control_solution
    )
    # control-solution tests arrive as the meter's QC (cg.qc/1), with no patient
    qc_docs = [r["doc"] for r in receiver.qc_results()]
    assert sorted(d["value"] for d in qc_docs) == sorted(
        float(r.value_mg_dl) for r in emu.state.readings if r.control_solution
    )
    assert all(d["schema"] == "cg.qc/1" and "patient_id" not in d and d["meter_id"] == meter_id for d in qc_docs)
    # the 3-year clock error travels with every reading: not trusted, flagged, corrected time kept
    assert {d["time_trusted"] for d in docs} == {False}
    assert all("meter_clock_implausible" in d["flags"] for d in docs)
    assert receiver.counts()["duplicates"] == 0
