"""Shared helpers of the USB-serial meter tests (imported by name; fixtures stay in their conftest)."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from gateway.clock import FakeClock
from gateway.meters.discovery import ALL_FAMILIES, identify
from gateway.meters.drivers import Timeouts
from gateway.meters.session import DownloadSession, SessionResult
from gateway.store import Store

TZ = ZoneInfo("Asia/Shanghai")
FAST = Timeouts(response_s=0.25, retries=3, probe_s=0.25)
"""Short timeouts for tests (no pacing: the pty answers in microseconds)."""


async def download(
    store: Store,
    clock: FakeClock,
    port: str,
    *,
    families: tuple[str, ...] = ALL_FAMILIES,
    timeouts: Timeouts = FAST,
    patient_id: str | None = None,
    set_meter_clock: bool = False,
) -> SessionResult:
    """Identify the meter on ``port`` (real probing) and run the shared DownloadSession."""
    driver = await identify(port, families, timeouts)
    session = DownloadSession(
        store,
        clock,
        driver,
        tz=TZ,
        patient_id=patient_id,
        max_clock_skew=timedelta(days=365),
        set_meter_clock=set_meter_clock,
    )
    return await session.run()
