"""Status page, /api/status, /healthz and /metrics: content, access and the absence of patient data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from web_harness import login, make_config

from gateway.clock import FakeClock
from gateway.forward.forwarder import Forwarder, _Inflight
from gateway.records import GlucoseReading, MeterInfo, Unit
from gateway.runtime import Runtime
from gateway.services import GatewayServices
from gateway.store.events import add_event
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings, upsert_meter
from gateway.web.app import create_app

PATIENT = "PID-7731-SECRET"


def _readings(n: int, patient_id: str = PATIENT) -> list[GlucoseReading]:
    t = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    return [
        GlucoseReading(meter_id="serial:AB12", sequence=i, meter_time=t.replace(tzinfo=None), clock_offset_s=0.0,
                       corrected_time=t, time_trusted=True, value=11.1 + i, unit=Unit.MMOL_L, patient_id=patient_id)
        for i in range(1, n + 1)
    ]  # fmt: skip


class Stuck:
    """A component that reports itself unhealthy."""

    name = "stuck-thing"

    async def run(self) -> None:  # pragma: no cover - never started here
        return None

    def healthy(self) -> bool:
        return False

    def snapshot(self) -> dict[str, Any]:
        return {"state": "stuck"}


def test_status_page_for_it(client: FlaskClient, runtime: Runtime) -> None:
    add_readings(runtime.store, _readings(3))
    login(client, "ivy")
    page = client.get("/status")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Gateway status" in html and "status.js" in html
    embedded = json.loads(html.split('id="status-data">', 1)[1].split("</script>", 1)[0])
    assert embedded["gateway"]["site_id"] == "chc-test"
    assert embedded["outbox"]["by_kind"]["glucose"]["pending"] == 3
    assert PATIENT not in html


def test_api_status_document(client: FlaskClient, runtime: Runtime) -> None:
    add_readings(runtime.store, _readings(2))
    upsert_meter(runtime.store, MeterInfo(meter_id="serial:AB12", family="lifescan", transport="serial", serial="AB12"))
    add_event(runtime.store, "disk_low", "less than 1000 MB free", level="warning")
    login(client, "ada")
    doc = client.get("/api/status").get_json()
    for key in ("gateway", "clock", "broker", "outbox", "disk", "devices", "components", "queue", "recent_errors"):
        assert key in doc, key
    assert doc["gateway"]["version"]
    assert doc["clock"]["synchronised"] is True
    assert doc["outbox"]["unsent"] >= 2
    assert doc["recent_errors"][0]["kind"] == "disk_low"
    assert [d["device_id"] for d in doc["devices"]] == ["serial:AB12"]


def test_api_status_with_bearer_token(tmp_path: Path, runtime: Runtime) -> None:
    token_file = tmp_path / "status-token"
    token_file.write_text("monitor-token-0123456789\n")
    token_file.chmod(0o600)
    config = make_config(tmp_path / "state2", web={"status_token_file": str(token_file)})
    client = create_app(GatewayServices(runtime), config).test_client()
    ok = client.get("/api/status", headers={"Authorization": "Bearer monitor-token-0123456789"})
    assert ok.status_code == 200 and ok.get_json()["gateway"]["gateway_id"] == "gw-01"
    assert client.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/status").status_code == 401
    # The token opens only the JSON twin, not the page.
    assert client.get("/status", headers={"Authorization": "Bearer monitor-token-0123456789"}).status_code == 302


def test_api_status_refuses_desk_roles(client: FlaskClient) -> None:
    login(client, "nina")
    assert client.get("/api/status").status_code == 403


def test_healthz(client: FlaskClient, runtime: Runtime) -> None:
    ok = client.get("/healthz")
    assert ok.status_code == 200 and ok.get_json() == {"ok": True, "level": "green", "problems": []}
    runtime.components.append(Stuck())
    bad = client.get("/healthz")
    assert bad.status_code == 503
    doc = bad.get_json()
    assert (doc["ok"], doc["level"]) == (False, "red")
    assert [(p["kind"], p["subject"], p["text"]) for p in doc["problems"]] == [
        ("component_failing", "stuck-thing", "component_failing: stuck-thing")
    ]


def test_metrics_format_and_values(client: FlaskClient, runtime: Runtime, fake_clock: FakeClock) -> None:
    add_readings(runtime.store, _readings(4))
    outbox = Outbox(runtime.store)
    sent = outbox.claim_batch(1)
    outbox.ack([m.message_id for m in sent])
    fake_clock.advance(90)
    forwarder = Forwarder(runtime.config, runtime.store, runtime.clock)  # two messages in flight (not running)
    for message in forwarder.outbox.claim_batch(2):
        forwarder._inflight[message.message_id] = _Inflight(message.seq, message.kind, fake_clock.monotonic(), None)
    runtime.components += [Stuck(), forwarder]
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("cg_outbox_messages", (("kind", "glucose"), ("state", "pending")))] == 3
    assert samples[("cg_outbox_messages", (("kind", "glucose"), ("state", "acked")))] == 1
    assert samples[("cg_outbox_in_flight", ())] == 2  # stored as pending: in flight is the forwarder's memory
    assert samples[("cg_outbox_oldest_unsent_age_seconds", ())] == pytest.approx(90, abs=1)
    assert samples[("cg_broker_connected", ())] == 0
    assert samples[("cg_clock_synchronised", ())] == 1
    assert samples[("cg_disk_free_bytes", ())] > 0
    assert ("cg_uptime_seconds", ()) in samples
    assert samples[("cg_component_healthy", (("component", "stuck-thing"),))] == 0
    assert PATIENT not in text and "11.1" not in text


def test_no_patient_data_in_monitor_endpoints(client: FlaskClient, runtime: Runtime) -> None:
    add_readings(runtime.store, _readings(3))
    login(client, "ivy")
    for path in ("/status", "/api/status", "/healthz", "/metrics"):
        body = client.get(path).get_data(as_text=True)
        assert PATIENT not in body, path


def test_queue_history_and_drain_rate(runtime: Runtime, fake_clock: FakeClock) -> None:
    services = GatewayServices(runtime)
    add_readings(runtime.store, _readings(10))
    services.sample_queue()
    outbox = Outbox(runtime.store)
    outbox.ack([m.message_id for m in outbox.claim_batch(6)])
    fake_clock.advance(120)
    services.sample_queue()
    history = services.queue_history(hours=6)
    assert [s["unsent"] for s in history["samples"]] == [10, 4]
    assert history["drain_per_min"] == 3.0  # 6 acks in 2 minutes
    assert history["last_ack_at"] is not None
    # Samples older than the kept window are pruned.
    fake_clock.advance(25 * 3600)
    services.sample_queue(keep_hours=24)
    assert len(services.queue_history(hours=48)["samples"]) == 1


def test_queue_history_before_two_samples(runtime: Runtime) -> None:
    history = GatewayServices(runtime).queue_history()
    assert (history["samples"], history["drain_per_min"], history["last_ack_at"]) == ([], None, None)
    assert history["drain_state"] == "idle"  # nothing to send: never "none messages/min"


def test_status_page_survives_odd_component_snapshots(client: FlaskClient, runtime: Runtime) -> None:
    runtime.components.append(Stuck())
    login(client, "ivy")
    assert client.get("/status").status_code == 200
    assert client.get("/api/status").get_json()["components"]["stuck-thing"] == {
        "healthy": False, "state": "stuck", "restarts": 0, "last_failure": None, "last_failure_bug": False,
        "last_failure_at": None,
    }  # fmt: skip


def test_uptime_counts_from_start(client: FlaskClient, fake_clock: FakeClock) -> None:
    fake_clock.advance(timedelta(hours=2).total_seconds())
    login(client, "ivy")
    assert client.get("/api/status").get_json()["gateway"]["uptime_s"] == 7200


def test_a_crashed_component_is_restarted_and_shown_on_the_status_page(client: FlaskClient, runtime: Runtime) -> None:
    """Issue 15, supervisor: the real daemon restarts a crashing component; IT sees restarts, type and time."""
    import asyncio

    from support.flaky_component import SECRET
    from support.flaky_component import components as flaky_components

    from gateway.daemon import run_daemon

    login(client, "ivy")

    async def scenario() -> dict[str, Any]:
        stop = asyncio.Event()
        daemon = asyncio.create_task(
            run_daemon(runtime.config, runtime=runtime, stop=stop, factories=(flaky_components,))
        )
        while not getattr(runtime.component("flaky"), "running", False):  # restarted after its crash
            assert not daemon.done(), "the daemon stopped"
            await asyncio.sleep(0.02)
        doc: dict[str, Any] = await asyncio.to_thread(lambda: client.get("/api/status").get_json())
        html = await asyncio.to_thread(lambda: client.get("/status").get_data(as_text=True))
        stop.set()
        assert await daemon == 0
        assert SECRET not in html
        assert "Restarts" in html and "Last failure" in html
        return doc

    doc = asyncio.run(scenario())
    flaky = doc["components"]["flaky"]
    assert (flaky["restarts"], flaky["last_failure"], flaky["last_failure_bug"]) == (1, "RuntimeError", True)
    assert flaky["last_failure_at"].startswith("2026-11-23T02:00")  # the runtime's clock
    assert SECRET not in json.dumps(doc)
    assert doc["recent_errors"][0]["kind"] == "component_crashed"


def test_dead_letters_on_the_status_page_without_payloads(client: FlaskClient, runtime: Runtime) -> None:
    from gateway.store.dead_letters import add_dead_letter

    payload = json.dumps({"schema": "cg.referral/1", "referral_id": "r1", "patient_id": PATIENT}).encode()
    fields = {"topic": "cmd/referral", "what": "referral", "field": "decision"}
    reason = "a required field is missing (decision)"
    assert add_dead_letter(runtime.store, **fields, reason=reason, payload=payload)
    assert not add_dead_letter(runtime.store, **fields, reason=reason, payload=payload)  # redelivered: kept once
    login(client, "ivy")
    doc = client.get("/api/status").get_json()
    assert doc["downlink"]["dead_letters"] == 1
    (recent,) = doc["downlink"]["recent"]
    assert (recent["topic"], recent["field"], recent["size_bytes"]) == ("cmd/referral", "decision", len(payload))
    html = client.get("/status").get_data(as_text=True)
    assert "Dead letters" in html and 'id="dead-letters-table"' in html
    for body in (html, json.dumps(doc), client.get("/metrics").get_data(as_text=True)):
        assert PATIENT not in body
