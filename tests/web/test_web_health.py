"""Issue 14: one health model behind the badge, ``/healthz`` and ``/metrics``. Each problem the issue names, made
real (a real forwarder whose broker is not there, real outbox rows growing old on the fake clock, the store's
free-space limits, the clock's sync state, the supervisor's restart record, a retina component without its
model): all three answers agree on it. Before, ``/healthz`` looked only at the store and at components'
``healthy()``, so it stayed 200 "ok" through all of these, and ``/metrics`` had no health gauges at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from web_harness import RetinaStub, add_users, login, make_config

from gateway.clock import FakeClock
from gateway.forward.forwarder import Forwarder
from gateway.records import GlucoseReading, Unit
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store.readings import add_readings
from gateway.web.app import create_app

Make = Callable[..., tuple[FlaskClient, Runtime]]
LIMITS = {"broker_down_s": 120, "oldest_unsent_s": 1800, "restart_window_s": 3600}


@pytest.fixture
def make_client(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Make]:
    """A client of the real app over a fresh runtime with ``store`` overrides (the free-space limits)."""
    opened: list[Runtime] = []

    def make(**store: Any) -> tuple[FlaskClient, Runtime]:
        runtime = open_runtime(
            make_config(tmp_path / f"state{len(opened)}", health=LIMITS, store=store), clock=fake_clock
        )
        add_users(runtime)
        opened.append(runtime)
        return create_app(GatewayServices(runtime), runtime.config).test_client(), runtime

    yield make
    for runtime in opened:
        runtime.store.close()


def _answers(client: FlaskClient) -> tuple[int, dict[str, Any], dict[tuple[str, str, str], float], str]:
    """``/healthz`` (status, JSON), the ``cg_health_problem`` gauges set to 1 and the badge's level from
    ``/api/status``: the three places the one model shows."""
    healthz = client.get("/healthz")
    metrics = client.get("/metrics").get_data(as_text=True)
    raised = {
        (s.labels["problem"], s.labels["level"], s.labels["subject"]): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "cg_health_problem" and s.value == 1
    }
    login(client, "ivy")
    badge = client.get("/api/status").get_json()["health"]["level"]
    return healthz.status_code, healthz.get_json(), raised, badge


def _reading(i: int) -> GlucoseReading:
    t = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    return GlucoseReading(
        meter_id="serial:AB12", sequence=i, meter_time=t.replace(tzinfo=None), clock_offset_s=0.0,
        corrected_time=t, time_trusted=True, value=6.1, unit=Unit.MMOL_L, patient_id="P-1",
    )  # fmt: skip


def test_broker_down_is_amber_then_red_after_the_set_time(make_client: Make, fake_clock: FakeClock) -> None:
    client, runtime = make_client(low_disk_warn_mb=0, min_free_mb=0)
    runtime.components.append(Forwarder(runtime.config, runtime.store, runtime.clock))  # never reaches its broker
    status, doc, raised, badge = _answers(client)
    assert (status, doc["level"], badge) == (200, "amber", "amber")
    assert [p["kind"] for p in doc["problems"]] == ["broker_down"]
    fake_clock.advance(121)
    status, doc, raised, badge = _answers(client)
    assert (status, doc["ok"], doc["level"], badge) == (503, False, "red", "red")
    # (the forwarder here is never started, so its loop also counts as stuck by now: component_failing)
    (problem,) = [p for p in doc["problems"] if p["kind"] == "broker_down"]
    assert problem["level"] == "red" and problem["value"] >= 120 and problem["limit"] == 120
    assert ("broker_down", "red", problem["subject"]) in raised


def test_an_old_unsent_message_is_amber(make_client: Make, fake_clock: FakeClock) -> None:
    client, runtime = make_client(low_disk_warn_mb=0, min_free_mb=0)
    add_readings(runtime.store, [_reading(1)])
    assert _answers(client)[1]["level"] == "green"
    fake_clock.advance(1801)
    status, doc, raised, badge = _answers(client)
    assert (status, doc["level"], badge) == (200, "amber", "amber")
    assert [(p["kind"], p["limit"]) for p in doc["problems"]] == [("outbox_late", 1800)]
    assert ("outbox_late", "amber", "") in raised


def test_low_disk_is_amber_and_a_full_disk_red(make_client: Make) -> None:
    # Limits above any machine's free space: the real file system is "low", then "full".
    huge = 1 << 40
    client, _ = make_client(low_disk_warn_mb=huge, min_free_mb=0)
    status, doc, raised, badge = _answers(client)
    assert (status, doc["level"], badge, [p["kind"] for p in doc["problems"]]) == (200, "amber", "amber", ["disk_low"])
    client, _ = make_client(low_disk_warn_mb=huge, min_free_mb=huge)
    status, doc, raised, badge = _answers(client)
    assert (status, doc["level"], badge, [p["kind"] for p in doc["problems"]]) == (503, "red", "red", ["disk_full"])
    assert ("disk_full", "red", "") in raised


def test_an_untrusted_clock_is_amber(make_client: Make, fake_clock: FakeClock) -> None:
    client, _ = make_client(low_disk_warn_mb=0, min_free_mb=0)
    fake_clock.synchronised = False
    status, doc, raised, badge = _answers(client)
    assert (status, doc["level"], badge, [p["kind"] for p in doc["problems"]]) == (
        200, "amber", "amber", ["clock_untrusted"]
    )  # fmt: skip
    assert ("clock_untrusted", "amber", "") in raised


def test_a_restarted_component_is_amber_a_failing_one_red_and_a_missing_model_amber(
    make_client: Make, fake_clock: FakeClock
) -> None:
    client, runtime = make_client(low_disk_warn_mb=0, min_free_mb=0)
    runtime.components.append(RetinaStub(problem="ModelNotFound"))  # running without its model
    runtime.supervision.failed("retina", OSError("camera gone"), fake_clock.utc_now(), bug=False)
    status, doc, raised, badge = _answers(client)
    assert (status, doc["level"], badge) == (200, "amber", "amber")
    assert [(p["kind"], p["subject"]) for p in doc["problems"]] == [
        ("component_restarted", "retina"), ("model_missing", "ModelNotFound")
    ]  # fmt: skip
    assert {("component_restarted", "amber", "retina"), ("model_missing", "amber", "ModelNotFound")} <= set(raised)
    fake_clock.advance(3601)  # the restart is old news after health.restart_window_s
    assert [p["kind"] for p in _answers(client)[1]["problems"]] == ["model_missing"]
