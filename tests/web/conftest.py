"""Fixtures for the page tests: a real store file, the real app, the four users."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from web_harness import CoreThread, ScriptedMeter, add_users, make_config, scripted_records, serve_meter_sync

from gateway.clock import FakeClock
from gateway.desk import SerialSyncRequest
from gateway.records import MeterRecord
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.web.app import create_app


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 23, 2, 0, tzinfo=UTC))


@pytest.fixture
def runtime(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Runtime]:
    rt = open_runtime(make_config(tmp_path / "state"), clock=fake_clock)
    add_users(rt)
    yield rt
    rt.store.close()


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    return create_app(GatewayServices(runtime), runtime.config)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def meter_records() -> list[MeterRecord]:
    """What the scripted meter of ``core`` holds (a test module overrides this fixture for other records)."""
    return scripted_records()


@pytest.fixture
def core(runtime: Runtime, meter_records: list[MeterRecord]) -> Iterator[CoreThread]:
    """The core thread serving desk downloads of a scripted serial meter holding ``meter_records``."""
    core = CoreThread(runtime)
    runtime.desk.queue(SerialSyncRequest)  # consumed from now on (as a meter source would)
    core.start(lambda: serve_meter_sync(runtime, lambda target: ScriptedMeter(target, meter_records, 0.0)))
    yield core
    core.stop()
