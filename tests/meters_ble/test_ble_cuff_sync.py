"""Real bleak against the emulated blood pressure cuff on an emulated BlueZ, end to end into the store (and, in
the last tests, over a real mosquitto to the reference receiver).

Two kinds of cuff, as on the market: one that hands over its memory as Blood Pressure Records through the RACP
(BLS 1.1, ``stored``) and one that indicates the measurements it has not delivered yet once the Measurement is
subscribed, then ends the connection (BLS 1.0, ``classic``). Both require bonding, as cuffs usually do. hci0 is
the gateway's adapter, cuffs sit on hci1/hci2.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from support.ble import LOCAL_NOW, TZ, run, with_ble

from gateway.clock import FakeClock
from gateway.config import GatewayConfig
from gateway.desk import MeterProgress
from gateway.emulate.ble_cuff import CuffFaults, CuffProfile, EmulatedCuff, in_kpa, make_cuff_readings
from gateway.emulate.bluez_env import BluezEnv
from gateway.meters.drivers import bluetooth
from gateway.meters.drivers.bps import BpsDriver
from gateway.meters.session import SessionResult
from gateway.meters.source import MeterSource, sync_meter
from gateway.records import PressureUnit, to_mmhg
from gateway.runtime import Runtime
from gateway.store import Store

pytestmark = pytest.mark.ble

KINDS = {"stored": True, "classic": False}


def cuff(
    adapter: int = 1,
    count: int = 20,
    *,
    stored: bool = True,
    unit: PressureUnit = PressureUnit.MMHG,
    users: tuple[int, ...] = (1,),
    serial: str = "CUFF-0001",
    skew_s: float = 0.0,
    faults: CuffFaults | None = None,
    **profile: Any,
) -> EmulatedCuff:
    return EmulatedCuff(
        BluezEnv.adapter_path(adapter),
        readings=make_cuff_readings(count, unit=unit, users=users),
        profile=CuffProfile(serial=serial, clock_skew=timedelta(seconds=skew_s), stored_records=stored, **profile),
        faults=faults,
        now=lambda: LOCAL_NOW,
    )


async def sync(c: EmulatedCuff, config: GatewayConfig, store: Store, clock: FakeClock, **kw: Any) -> SessionResult:
    assert c.address is not None
    return await sync_meter(c.address, config=config, store=store, clock=clock, **kw)


def rows(store: Store, meter_id: str = "bps:CUFF-0001") -> list[dict[str, Any]]:
    return store.query("SELECT * FROM blood_pressure WHERE meter_id = ? ORDER BY meter_time, id", [meter_id])


def racp_writes(c: EmulatedCuff) -> list[bytes]:
    return [entry[1] for entry in c.log if entry[0] == "racp"]


@pytest.mark.parametrize("kind", KINDS)
def test_stored_measurements_all_delivered_once_then_only_new_ones(bluez, config, store, clock, kind) -> None:
    stored = KINDS[kind]

    async def go() -> tuple[SessionResult, SessionResult, SessionResult, list[bytes]]:
        async with cuff(count=60, stored=stored, skew_s=-600, segment_size=7) as c:  # cuff clock 10 minutes slow
            first = await sync(c, config, store, clock, patient_id="P-001")
            second = await sync(c, config, store, clock, patient_id="P-001")
            c.add_readings(5)  # five more measurements before the next visit
            third = await sync(c, config, store, clock, patient_id="P-001")
            return first, second, third, racp_writes(c)

    first, second, third, racp = run(go())
    assert (first.state, first.received, first.added) == ("done", 60, 60)
    assert first.meter is not None and first.meter.meter_id == "bps:CUFF-0001" and first.meter.family == "bps"
    assert (second.state, second.added, third.state, third.added) == ("done", 0, "done", 5)
    if stored:  # RACP: all, then ">= 61" twice (nothing new, then the five)
        assert racp == [b"\x04\x01", b"\x01\x01", b"\x04\x03\x01\x3d\x00", b"\x04\x03\x01\x3d\x00",
                        b"\x01\x03\x01\x3d\x00"]  # fmt: skip
    else:  # the cuff itself sent only what this gateway had not confirmed
        assert (second.received, third.received) == (0, 5)

    stored_rows = rows(store)
    expected = make_cuff_readings(65)
    assert len(stored_rows) == 65
    values = [(r["systolic"], r["diastolic"], r["mean_arterial"], r["pulse_bpm"], r["cuff_user"]) for r in stored_rows]
    assert values == [(float(e.systolic), float(e.diastolic), float(e.mean_arterial or 0), e.pulse, 1)
                      for e in expected]  # fmt: skip
    assert [r["sequence"] for r in stored_rows] == ([e.sequence for e in expected] if stored else [None] * 65)
    # clock: the cuff was 600 s slow, so corrected = cuff time + 600 s, in UTC, trusted
    assert {r["clock_offset_s"] for r in stored_rows} == {600.0} and {r["time_trusted"] for r in stored_rows} == {1}
    first_row, first_expected = stored_rows[0], expected[0]
    assert first_expected.time is not None
    corrected = datetime.fromisoformat(first_row["corrected_time"])
    assert corrected == (first_expected.time + timedelta(seconds=600)).replace(tzinfo=TZ)
    assert datetime.fromisoformat(first_row["meter_time"]) == first_expected.time
    assert {r["patient_id"] for r in stored_rows} == {"P-001"}
    # what the cuff said: every 7th an irregular pulse, every 11th body movement, every 13th a loose cuff
    status = {r["meter_time"]: json.loads(r["status"]) for r in stored_rows}
    assert status[expected[6].time.isoformat()] == ["irregular_pulse"]  # type: ignore[union-attr]
    assert status[expected[10].time.isoformat()] == ["body_movement"]  # type: ignore[union-attr]
    assert status[expected[12].time.isoformat()] == ["cuff_too_loose"]  # type: ignore[union-attr]
    assert store.scalar("SELECT count(*) FROM outbox WHERE kind = 'blood_pressure'") == 65


@pytest.mark.parametrize("kind", KINDS)
def test_link_dropped_mid_transfer_then_resumed_nothing_lost_or_doubled(bluez, config, store, clock, kind) -> None:
    stored = KINDS[kind]

    async def go() -> tuple[SessionResult, SessionResult]:
        async with cuff(count=80, stored=stored, faults=CuffFaults(drop_link_after=30)) as c:
            cut = await sync(c, config, store, clock)
            resumed = await sync(c, config, store, clock)
            return cut, resumed

    cut, resumed = run(go())
    assert cut.added == 30
    if stored:  # the RACP report was cut short: the session knows it
        assert cut.state == "interrupted" and cut.error is not None and cut.error.type == "DeviceDisconnected"
    assert (resumed.state, resumed.added, resumed.duplicates) == ("done", 50, 0)
    expected = make_cuff_readings(80)
    assert [(r["meter_time"], r["systolic"]) for r in rows(store)] == [
        (e.time.isoformat() if e.time else None, float(e.systolic)) for e in expected
    ]  # every measurement once: nothing lost, nothing twice
    assert store.scalar("SELECT count(*) FROM outbox WHERE kind = 'blood_pressure'") == 80


def test_kpa_cuff_is_converted_right_and_keeps_what_it_reported(bluez, config, store, clock) -> None:
    async def go() -> SessionResult:
        async with cuff(count=12, unit=PressureUnit.KPA) as c:
            return await sync(c, config, store, clock, patient_id="P-KPA")

    result = run(go())
    assert (result.state, result.added) == ("done", 12)
    mmhg = make_cuff_readings(12)  # the same measurements as a cuff set to mmHg shows them
    for row, kpa, whole in zip(rows(store), make_cuff_readings(12, unit=PressureUnit.KPA), mmhg, strict=True):
        assert row["unit"] == "kPa"
        assert (row["systolic"], row["diastolic"]) == (float(kpa.systolic), float(kpa.diastolic))  # as reported
        assert row["systolic_mmhg"] == round(float(kpa.systolic) * 7.50062, 1)  # 1 kPa = 7.50062 mmHg
        assert row["diastolic_mmhg"] == to_mmhg(float(kpa.diastolic), PressureUnit.KPA)
        assert abs(row["systolic_mmhg"] - float(whole.systolic)) <= 0.4  # kPa to 0.1 is within 0.375 mmHg
        assert kpa.systolic == in_kpa(int(whole.systolic))
    first = rows(store)[0]
    assert (first["systolic"], first["systolic_mmhg"]) == (17.2, 129.0)  # 129 mmHg shown as 17.2 kPa


@pytest.mark.parametrize("kind", KINDS)
def test_multi_user_cuff_readings_go_to_the_chosen_patient_only(bluez, config, store, clock, kind) -> None:
    async def go() -> tuple[SessionResult, SessionResult]:
        async with cuff(count=20, stored=KINDS[kind], users=(1, 2)) as c:
            husband = await sync(c, config, store, clock, patient_id="P-HUSBAND", cuff_user=2)
            c.add_readings(4, users=(1, 2))
            wife = await sync(c, config, store, clock, patient_id="P-WIFE", cuff_user=1)
            return husband, wife

    husband, wife = run(go())
    assert (husband.added, husband.other_users, wife.added, wife.other_users) == (20, 10, 4, 2)
    by_patient: dict[Any, set[int]] = {}
    for row in rows(store):
        by_patient.setdefault(row["patient_id"], set()).add(row["cuff_user"])
    # each patient has only the chosen user's measurements; the other user's are kept without a patient
    assert by_patient == {"P-HUSBAND": {2}, "P-WIFE": {1}, None: {1, 2}}
    assert store.scalar("SELECT count(*) FROM blood_pressure WHERE patient_id = 'P-HUSBAND'") == 10
    assert store.scalar("SELECT count(*) FROM blood_pressure WHERE patient_id = 'P-WIFE'") == 2


@pytest.mark.parametrize("kind", KINDS)
def test_no_cuff_user_chosen_the_patient_has_the_cuffs_one_user_only(bluez, config, store, clock, kind) -> None:
    """The desk's "its one user (one-person cuff)" on a cuff that turns out to be shared: the first user it names is the
    patient's, the other's measurements are kept without a patient; once the cuff has named two users, a download
    without a chosen user gives the patient none, and says so."""

    async def go() -> tuple[SessionResult, SessionResult, SessionResult]:
        async with cuff(count=20, stored=KINDS[kind], users=(1, 2)) as c:
            first = await sync(c, config, store, clock, patient_id="P-WIFE")
            c.add_readings(4, users=(1, 2))
            again = await sync(c, config, store, clock, patient_id="P-WIFE")
            c.add_readings(2, users=(1, 2))
            chosen = await sync(c, config, store, clock, patient_id="P-WIFE", cuff_user=1)
            return first, again, chosen

    first, again, chosen = run(go())
    assert (first.added, first.other_users, first.shared_cuff) == (20, 10, False)
    assert (again.added, again.other_users, again.shared_cuff) == (4, 4, True)
    assert (chosen.added, chosen.other_users, chosen.shared_cuff) == (2, 1, False)
    by_session: dict[Any, dict[Any, set[int]]] = {}
    for row in rows(store):
        by_session.setdefault(row["session_id"], {}).setdefault(row["patient_id"], set()).add(row["cuff_user"])
    assert by_session == {
        first.session_id: {"P-WIFE": {1}, None: {2}},  # user 1 named first: the cuff's one user, so far
        again.session_id: {None: {1, 2}},  # a shared cuff: nobody's until the nurse assigns them per user
        chosen.session_id: {"P-WIFE": {1}, None: {2}},
    }


def test_bonding_is_required_and_paired(bluez, config, store, clock) -> None:
    no_retries = with_ble(config, connect_retries=0)  # pairing is not a retry: it happens even without retries

    async def go() -> tuple[bool, SessionResult, list[Any]]:
        async with cuff(count=6) as c:
            assert c.address is not None
            driver = await bluetooth.open_driver(c.address, no_retries)
            paired = driver.paired and isinstance(driver, BpsDriver) and driver.stored_records
            await driver.close()
            return paired, await sync(c, config, store, clock), list(c.log)

    paired, result, log = run(go())
    assert paired and any(entry[0] == "refused_unpaired" for entry in log)
    assert (result.state, result.added) == ("done", 6)


def test_classic_cuff_measuring_while_connected_and_malformed_frame(bluez, config, store, clock) -> None:
    """Cuff pressure notifications during a measurement are skipped; a malformed measurement is skipped, reported,
    and every good one kept."""

    async def go() -> tuple[SessionResult, list[Any]]:
        faults = CuffFaults(malformed_sequences=frozenset({4}))
        async with cuff(count=8, stored=False, measure_on_connect=True, faults=faults) as c:
            return await sync(c, config, store, clock), list(c.log)

    result, log = run(go())
    assert ("measured", 9) in log  # the cuff measured on connect: 3 cuff pressures, then measurement 9
    assert result.state == "interrupted" and result.error is not None and result.error.type == "RecordError"
    assert "malformed frame" in result.error.message and "need 19 bytes, got 18" in result.error.message
    assert result.added == 8  # 1-3, 5-9
    assert len(rows(store)) == 8


def test_scan_finds_meters_and_cuffs_and_the_desk_downloads_a_cuff(bluez, config, store, clock) -> None:
    """The one meter component, BLE strategy: scanning recognises the Blood Pressure Service beside the Glucose
    Service, and a desk request for a cuff (with its user) is served like a meter's."""
    from gateway.emulate.ble_meter import EmulatedGlucoseMeter, make_records
    from gateway.services import GatewayServices

    async def go() -> tuple[list[Any], MeterProgress | None]:
        runtime = Runtime(config=config, store=store, clock=clock)
        runtime.desk.bind(asyncio.get_running_loop())
        source = MeterSource(runtime)
        runtime.components = [source]
        task = asyncio.create_task(source.run())
        meter = EmulatedGlucoseMeter(BluezEnv.adapter_path(1), records=make_records(3), now=lambda: LOCAL_NOW)
        async with meter, cuff(2, count=10, users=(1, 2)) as c:
            found = await bluetooth.scan(config, timeout=1.5)
            await asyncio.sleep(0)  # let the component create its queue
            assert c.address is not None
            session_id = GatewayServices(runtime).request_meter_sync(
                c.address, patient_id="P-9", operator="nurse", cuff_user=1
            )
            for _ in range(300):
                live = runtime.progress.get(session_id)
                if live and live.state in ("done", "failed", "interrupted"):
                    break
                await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        live = runtime.progress.get(session_id)
        assert live is None or isinstance(live, MeterProgress)
        return found, live

    found, live = run(go())
    assert sorted((f.address, f.family) for f in found) == [("00:00:00:02:00:00", "gls"), ("00:00:00:03:00:00", "bps")]
    assert live is not None and (live.state, live.added, live.other_users) == ("done", 10, 5)
    assert {r["patient_id"] for r in rows(store) if r["cuff_user"] == 1} == {"P-9"}
    audit = store.query("SELECT detail FROM audit WHERE action = 'meter_sync_requested'")
    assert json.loads(audit[0]["detail"])["cuff_user"] == 1


@pytest.mark.parametrize("fmt", ["json", "fhir"])
def test_cuff_readings_reach_the_reference_receiver(bluez, tmp_path, broker, receiver_factory, clock, fmt) -> None:
    """Emulated cuff -> real bleak -> store -> real MQTT forwarder -> reference receiver, acknowledged, once."""
    from support.broker import GATEWAY, SITE, ForwarderRunner, gateway_config, wait_until

    from gateway.store import open_store
    from gateway.store.db import Origin
    from gateway.store.outbox import Outbox

    store = open_store(tmp_path / "gw.db", tmp_path / "img", clock=clock, origin=Origin(SITE, GATEWAY, fmt))
    config = gateway_config(tmp_path / "gw", port=broker.port)

    async def go() -> tuple[SessionResult, SessionResult]:
        async with cuff(count=30, unit=PressureUnit.KPA, serial="MQ-BP", skew_s=60) as c:
            first = await sync(c, config, store, clock, patient_id="P-0100")
            return first, await sync(c, config, store, clock, patient_id="P-0100")

    first, again = run(go())
    assert (first.added, again.added) == (30, 0)
    receiver = receiver_factory(broker)
    try:
        with ForwarderRunner(config, store, clock):
            wait_until(lambda: receiver.counts()["blood_pressure"] == 30, what="30 readings at the receiver")
            wait_until(lambda: Outbox(store).stats().counts["blood_pressure"] == {"acked": 30}, what="all acknowledged")
        docs = [r["doc"] for r in receiver.blood_pressure()]
        assert receiver.counts()["duplicates"] == 0 and receiver.counts()["invalid"] == 0
        expected = make_cuff_readings(30, unit=PressureUnit.KPA)
        if fmt == "json":
            assert {d["patient_id"] for d in docs} == {"P-0100"} and {d["unit"] for d in docs} == {"kPa"}
            assert sorted(d["sequence"] for d in docs) == list(range(1, 31))
            assert sorted(d["systolic_mmhg"] for d in docs) == sorted(to_mmhg(float(e.systolic), PressureUnit.KPA)
                                                                      for e in expected)  # fmt: skip
        else:  # as the platform received them, parsed by an independent FHIR library
            observation = pytest.importorskip("fhir.resources.R4B.observation")
            parsed = [observation.Observation.model_validate(d) for d in docs]
            assert {p.category[0].coding[0].code for p in parsed} == {"vital-signs"}
            assert {d["code"]["coding"][0]["code"] for d in docs} == {"85354-9"}
            systolic = sorted(
                c["valueQuantity"]["value"] for d in docs for c in d["component"]
                if c["code"]["coding"][0]["code"] == "8480-6"
            )  # fmt: skip
            assert systolic == sorted(to_mmhg(float(e.systolic), PressureUnit.KPA) for e in expected)
    finally:
        store.close()
